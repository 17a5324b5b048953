/**
 * lz4 through the system's liblz4 (liblz4.so.1, the reference C library),
 * into buffers the caller owns. lz4-napi hands back a new Buffer per call:
 * for a dump that is one allocation per chunk, which GC reclaims only
 * later (the tool's RSS grew by hundreds of MiB on a 1 GiB dump), and its
 * Rust encoder is slower than the C one. Here a compression writes into a
 * pooled buffer, on koffi's worker threads, and allocates nothing.
 *
 * The stored form is the one lz4-napi reads and writes (formats/image-v1.md):
 * a 4-byte little-endian decoded length, then one LZ4 block.
 */
import { koffi } from './koffi.js';

type Cb<T> = (err: unknown, r: T) => void;
interface Fn<A extends unknown[], R> { (...a: A): R; async(...a: [...A, Cb<R>]): void }
const bind = <A extends unknown[], R>(f: unknown) => f as Fn<A, R>;

let lib: ReturnType<typeof koffi.load> | null | undefined;
let compressFn: Fn<[Buffer, Buffer, number, number], number>;
let decompressFn: Fn<[Buffer, Buffer, number, number], number>;
let boundFn: Fn<[number], number>;

/** Whether liblz4 is on this machine (loaded on first use). */
export function nativeLz4(): boolean {
  if (lib === undefined) {
    try {
      lib = koffi.load('liblz4.so.1');
      compressFn = bind(lib.func('int LZ4_compress_default(const char *src, char *dst, int srcSize, int dstCapacity)'));
      decompressFn = bind(lib.func('int LZ4_decompress_safe(const char *src, char *dst, int compressedSize, int dstCapacity)'));
      boundFn = bind(lib.func('int LZ4_compressBound(int inputSize)'));
    } catch {
      lib = null;
    }
  }
  return lib !== null;
}

/** Bytes `out` needs for any input of `rawLength`: the length prefix and the worst-case block. */
export function lz4StoredBound(rawLength: number): number {
  if (!nativeLz4()) throw new Error('liblz4.so.1 is not available');
  return 4 + boundFn(rawLength);
}

/**
 * Compresses `src` into `out` (at least src.length bytes) on a worker
 * thread; resolves with the stored length (prefix included), or 0 when the
 * stored form would not be smaller than the input (the encoder gives up as
 * soon as it knows, which makes incompressible chunks cheap).
 */
export function lz4CompressInto(src: Buffer, out: Buffer): Promise<number> {
  if (!nativeLz4()) return Promise.reject(new Error('liblz4.so.1 is not available'));
  // A block of rawLength - 5 bytes or more would not make the chunk smaller.
  if (src.length <= 5) return Promise.resolve(0);
  out.writeUInt32LE(src.length, 0);
  const block = out.subarray(4);
  return new Promise((resolve, reject) => {
    compressFn.async(src, block, src.length, Math.min(block.length, src.length - 5), (err: unknown, n: number) => {
      if (err) reject(err);
      else resolve(n > 0 ? n + 4 : 0);
    });
  });
}

/** Decodes a stored chunk into `out` (exactly its decoded length); returns the bytes decoded, or -1 if it is not valid lz4. */
export function lz4DecompressInto(stored: Buffer, out: Buffer): number {
  if (!nativeLz4()) throw new Error('liblz4.so.1 is not available');
  const n = decompressFn(stored.subarray(4), out, stored.length - 4, out.length);
  return n < 0 ? -1 : n;
}

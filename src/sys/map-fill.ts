/**
 * A read-only mapping of a pages file, and the native call that writes a
 * chunk from it into a task after taking its CRC (src/sys/tsnap-mapfill.c,
 * in libtsnap-crc32.so): the one-copy fill of a restore
 * (src/restore/map-fill.ts).
 */
import { libc } from './libc.js';
import { SysError } from './errors.js';
import { SYS, PROT_READ, MAP_SHARED } from './uapi.js';
import { load } from './crc32.js';

const MAP_POPULATE = 0x8000;

/** `length` bytes of `fd` from offset 0, shared and read-only; `populate`: its page tables filled now. */
export function mapReadOnly(fd: number, length: number, populate = false): bigint {
  libc.clearErrno();
  const r = BigInt(libc.syscall(SYS.mmap, 0, length, PROT_READ, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0));
  // The raw syscall: -4095..-1 is -errno (libc's wrapper sets errno and returns -1).
  if (r < 0n) throw new SysError('mmap', r === -1n ? libc.errno() : Number(-r));
  return r;
}

type UnmapAsync = { async(addr: bigint, len: number, cb: (err: unknown, ret: number) => void): void };
let unmapFn: UnmapAsync | null | undefined;

/**
 * munmap on libuv's pool, not waited for (tsnap_unmap): a GiB of mapped
 * file pages takes ~30 ms to unmap, which the restore need not wait for
 * (the mapping is read-only and holds its own reference to the file).
 * Synchronous when the library has no tsnap_unmap.
 */
export function unmapLater(addr: bigint, length: number): void {
  if (unmapFn === undefined) {
    unmapFn = null;
    try { unmapFn = (load()?.func('int tsnap_unmap(uint64_t addr, uint64_t len)') as UnmapAsync | undefined) ?? null; } catch { /* synchronous */ }
  }
  if (!unmapFn) return unmap(addr, length);
  unmapFn.async(addr, length, () => { /* a failed munmap of a mapping tsnap made leaves only the mapping */ });
}

export function unmap(addr: bigint, length: number): void {
  const r = Number(libc.syscall(SYS.munmap, addr, length, 0, 0, 0, 0));
  if (r < 0) throw new SysError('munmap', libc.errno());
}

/**
 * tsnap_crc_writev: the CRC of `len` bytes at `src` into `crc` (4 bytes,
 * little-endian), and the pieces (offset, remote address, length: u64
 * triples, by offset) written into `pid` from there. The bytes written,
 * -EFAULT when the mapping faulted (the file shrank), or -errno.
 * `.async` runs it on libuv's pool; `pieces` and `crc` must stay alive.
 */
export interface CrcWritev {
  (pid: number, src: bigint, len: number, pieces: Buffer, n: number, crc: Buffer): number | bigint;
  async(pid: number, src: bigint, len: number, pieces: Buffer, n: number, crc: Buffer, cb: (err: unknown, ret: number | bigint) => void): void;
}

let fn: CrcWritev | null | undefined;

/** Null when the library is not built (or is older), or its SIGBUS guard cannot be installed: the caller reads into buffers instead. */
export function nativeCrcWritev(): CrcWritev | null {
  if (fn === undefined) {
    fn = null;
    try {
      const lib = load();
      const init = lib?.func('int tsnap_mapfill_init(void)') as (() => number) | undefined;
      if (lib && init && init() === 0) {
        fn = lib.func('int64_t tsnap_crc_writev(int pid, uintptr_t src, uint64_t len, const uint64_t *pieces, uint32_t n, uint32_t *crc)') as CrcWritev;
      }
    } catch { /* the fallback */ }
  }
  return fn;
}

/**
 * tsnap_crc_writev_many: chunks in one call. `descs`: u64 quadruples
 * (source address, length, first piece's index in `pieces`, pieces);
 * `done`: i64 pairs (the chunk's result as tsnap_crc_writev's, its CRC).
 * Returns the chunks done (it stops after a failed one).
 */
export interface CrcWritevMany {
  (pid: number, descs: Buffer, n: number, pieces: Buffer, done: Buffer): number;
  async(pid: number, descs: Buffer, n: number, pieces: Buffer, done: Buffer, cb: (err: unknown, ret: number) => void): void;
}

let many: CrcWritevMany | null | undefined;

/** As nativeCrcWritev (the same guard), for batches. */
export function nativeCrcWritevMany(): CrcWritevMany | null {
  if (many === undefined) {
    many = null;
    if (nativeCrcWritev()) {
      try { many = load()!.func('uint32_t tsnap_crc_writev_many(int pid, const uint64_t *descs, uint32_t n, const uint64_t *pieces, int64_t *done)') as CrcWritevMany; } catch { /* the fallback */ }
    }
  }
  return many;
}

/**
 * tsnap_crc_gather: a chain's resolved runs (the ResolvedTable's columns as
 * they are, runs from..to-1) written by address from mappings, each
 * chunk's CRC taken as its bytes pass (tsnap-mapfill.c says what each
 * buffer holds). 0, 1 (a short write: out[0] bytes written), -EFAULT (the
 * mapping faulted in chunk out[1]), or -errno. Every buffer and array must
 * stay alive until `.async`'s callback.
 */
export interface CrcGather {
  (pid: number, chunks: Buffer, seg: Buffer, crcs: Buffer, nChunks: number, base: Uint32Array, start: Float64Array, pages: Float64Array, image: Int32Array, chunk: Uint32Array, offset: Float64Array, page: number, from: number, to: number, finish: number, out: Buffer): number | bigint;
  async(pid: number, chunks: Buffer, seg: Buffer, crcs: Buffer, nChunks: number, base: Uint32Array, start: Float64Array, pages: Float64Array, image: Int32Array, chunk: Uint32Array, offset: Float64Array, page: number, from: number, to: number, finish: number, out: Buffer, cb: (err: unknown, ret: number | bigint) => void): void;
}

/** tsnap_crc32_combine_many: out[i] = the CRC of A then B from a[i], b[i] and B's length blen[i] (u32, u32, u64, u32 arrays). */
export type CrcCombineMany = (a: Buffer, b: Buffer, blen: Buffer, n: number, out: Buffer) => void;

let gather: { run: CrcGather; combine: CrcCombineMany } | null | undefined;

/** As nativeCrcWritev (the same guard); null when the library is older. */
export function nativeCrcGather(): { run: CrcGather; combine: CrcCombineMany } | null {
  if (gather === undefined) {
    gather = null;
    if (nativeCrcWritev()) {
      try {
        const lib = load()!;
        gather = {
          run: lib.func('int64_t tsnap_crc_gather(int pid, const uint64_t *chunks, uint64_t *seg, uint32_t *crcs, uint32_t nchunks, const uint32_t *base, const double *start, const double *pages, const int32_t *image, const uint32_t *chunk, const double *offset, uint32_t page, uint32_t from, uint32_t to, int finish, uint64_t *out)') as CrcGather,
          combine: lib.func('void tsnap_crc32_combine_many(const uint32_t *a, const uint32_t *b, const uint64_t *blen, uint32_t n, uint32_t *out)') as CrcCombineMany,
        };
      } catch { /* the fallback */ }
    }
  }
  return gather;
}

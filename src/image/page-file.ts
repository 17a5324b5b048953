/**
 * The pages file: a header, then chunks of page data back to back, each
 * compressed on its own so that chunks compress and decompress in parallel
 * and any page can be read without the rest of the file. The writer is in
 * page-writer.ts.
 */
import { openSync, readSync, fstatSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { lz4napi } from './lz4-napi.js';
import { read as fsRead } from 'node:fs';
import { decodeHeader } from './header.js';
import { crc32 } from './checksum.js';
import { nativePreadCrc32 } from '../sys/crc32.js';
import { errnoName } from '../sys/errors.js';
import { mapReadOnly, unmapLater } from '../sys/map-fill.js';
import { HEADER_SIZE, FileKind, PAGES_FILES, FORMAT_VERSION, FORMAT_VERSION_SPLIT, type ChunkEntry } from '../../formats/schema.js';
import { TsnapError } from '../errors.js';

export { PageFileWriter, DEFAULT_CHUNK_SIZE } from './page-writer.js';

/**
 * The synchronous read takes the native read-and-CRC once a reader has
 * read this much: before, node:zlib's CRC (checksum.ts) spares a small
 * process's restore the library's load.
 */
const NATIVE_AFTER = 16 << 20;

/**
 * Random access to the chunks of an image's pages files (`pages`, and
 * `pages.1` when a chunk is there: format 2), each checked against its CRC.
 */
export class PageFileReader {
  /** Per pages file (PAGES_FILES): its fd, its path, its page data's length. */
  private readonly fds: number[] = [];
  readonly paths: string[] = [];
  readonly payloadLengths: number[] = [];
  /** 4-byte CRC outputs of the pool's reads, reused (off V8's heap: the pool writes them). */
  private readonly crcSlots: Buffer[] = [];
  /** Bytes readChunk was asked for so far (NATIVE_AFTER). */
  private syncBytes = 0;
  /** Per pages file: its read-only mapping (mappedChunk), made on first use. */
  private readonly maps: (bigint | null)[] = [];

  constructor(readonly dir: string, private readonly chunks: ChunkEntry[]) {
    const files = 1 + chunks.reduce((m, c) => Math.max(m, c.file ?? 0), 0);
    try {
      for (let f = 0; f < files; f++) this.openFile(f);
    } catch (err) {
      this.close();
      throw err;
    }
  }

  /** The page data's length of `pages` (the only file of a format 1 image). */
  get payloadLength(): number {
    return this.payloadLengths[0];
  }

  /** `pages` itself: named in errors that are not about one chunk. */
  get path(): string {
    return this.paths[0];
  }

  /** The file chunk `i` is in. */
  private pathOf(i: number): string {
    return this.paths[this.chunks[i]?.file ?? 0] ?? this.paths[0];
  }

  private openFile(f: number): void {
    const name = PAGES_FILES[f];
    if (!name) throw new TsnapError('badImage', `${this.dir}/pagemap: a chunk is in pages file ${f}, which no format defines; the image is damaged`);
    const path = join(this.dir, name);
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (err) {
      throw new TsnapError('badImage', `${path}: missing or unreadable (${(err as NodeJS.ErrnoException).code}); the image is incomplete`);
    }
    this.fds.push(fd);
    this.paths.push(path);
    const head = Buffer.alloc(HEADER_SIZE);
    const got = readSync(fd, head, 0, HEADER_SIZE, 0);
    const h = decodeHeader(head.subarray(0, got), path, FileKind.Pages);
    // The writer gives `pages` version 1 and `pages.1` version 2 (formats/image-v1.md): the two
    // swapped, or one from another image, is told here even where their lengths agree.
    const want = f === 0 ? FORMAT_VERSION : FORMAT_VERSION_SPLIT;
    if (h.version !== want) {
      throw new TsnapError('badImage', `${path}: its header says format ${h.version}, a ${name} file says ${want}; it was swapped with ${PAGES_FILES[1 - f] ?? 'another file'} or comes from another image`);
    }
    const size = fstatSync(fd).size;
    if (size !== HEADER_SIZE + h.payloadLength) {
      throw new TsnapError('badImage', `${path}: ${size < HEADER_SIZE + h.payloadLength ? 'truncated' : 'has data past its end'} (${size} bytes, expected ${HEADER_SIZE + h.payloadLength}); the image is damaged`);
    }
    this.payloadLengths.push(h.payloadLength);
  }

  /**
   * Like readChunk, off the main thread: the read and the decompression run
   * on libuv's pool, so several chunks can be in flight while the caller
   * writes earlier ones into the target.
   */
  async readChunkAsync(i: number, into?: Buffer): Promise<Buffer> {
    try {
      return await this.readChunkAsyncUnchecked(i, into);
    } catch (err) {
      throw this.readError(i, err);
    }
  }

  private async readChunkAsyncUnchecked(i: number, into?: Buffer): Promise<Buffer> {
    const c = this.checkedEntry(i);
    // A reused buffer: fresh 1 MiB allocations are mmap'ed and page-faulted anew each time.
    const stored = into && into.length >= c.storedLength ? into.subarray(0, c.storedLength) : Buffer.allocUnsafe(c.storedLength);
    const native = nativePreadCrc32();
    if (native && c.storedLength > 0) {
      // Read and CRC on the pool, each piece checked while in that CPU's
      // cache: the main thread only writes (docs/performance.md, "Restore, 1 GiB").
      const slot = this.crcSlots.pop() ?? Buffer.allocUnsafeSlow(4);
      try {
        const got = await new Promise<number>((resolve, reject) => {
          native.async(this.fds[c.file ?? 0], stored, c.storedLength, HEADER_SIZE + c.fileOffset, slot, (err, ret) => (err ? reject(err) : resolve(Number(ret))));
        });
        this.checkNativeRead(i, c, got, slot.readUInt32LE(0));
      } finally {
        this.crcSlots.push(slot);
      }
    } else {
      let got = 0;
      while (got < c.storedLength) {
        const n = await new Promise<number>((resolve, reject) => {
          fsRead(this.fds[c.file ?? 0], stored, got, c.storedLength - got, HEADER_SIZE + c.fileOffset + got, (err, bytes) => (err ? reject(err) : resolve(bytes)));
        });
        if (n === 0) throw new TsnapError('badImage', `${this.pathOf(i)}: truncated inside chunk ${i}`);
        got += n;
      }
      this.checkStored(i, c, stored);
    }
    if (c.codec === 'none') return stored;
    return this.checkRaw(i, c, stored, () => lz4napi().uncompress(stored));
  }

  /** Chunk `i`'s index entry, checked against its file's length. */
  entry(i: number): ChunkEntry {
    return this.checkedEntry(i);
  }

  private checkedEntry(i: number): ChunkEntry {
    const c = this.chunks[i];
    if (!c) throw new TsnapError('badImage', `${this.pathOf(i)}: chunk ${i} is not in the index`);
    if (c.fileOffset + c.storedLength > this.payloadLengths[c.file ?? 0]) {
      throw new TsnapError('badImage', `${this.pathOf(i)}: chunk ${i} lies past the end of the data; the image is damaged`);
    }
    return c;
  }

  /** The uncompressed bytes of chunk `i`; `into`: a buffer to read the stored bytes into (as readChunkAsync). */
  readChunk(i: number, into?: Buffer): Buffer {
    try {
      return this.readChunkUnchecked(i, into);
    } catch (err) {
      throw this.readError(i, err);
    }
  }

  /** Any failure to produce a chunk (I/O included) is a bad image, in one line. */
  private readError(i: number, err: unknown): TsnapError {
    if (err instanceof TsnapError) return err;
    const e = err as NodeJS.ErrnoException;
    return new TsnapError('badImage', `${this.pathOf(i)}: chunk ${i} cannot be read (${e?.code ?? String(e?.message ?? err).split('\n')[0]})`, err);
  }

  /**
   * Checks chunk `i` as stored (its CRC, and the lz4 length prefix) without
   * decoding it: what a restore does with chunks it does not need.
   */
  checkChunk(i: number, into?: Buffer): void {
    try {
      const c = this.checkedEntry(i);
      const stored = this.readStored(i, c, into);
      this.checkStored(i, c, stored);
      if (c.codec === 'lz4' && (stored.length < 4 || stored.readUInt32LE(0) !== c.rawLength)) {
        throw new TsnapError('badImage', `${this.pathOf(i)}: chunk ${i} does not decompress (length prefix is not ${c.rawLength})`);
      }
    } catch (err) {
      throw this.readError(i, err);
    }
  }

  private readStored(i: number, c: ChunkEntry, into?: Buffer): Buffer {
    const stored = into && into.length >= c.storedLength ? into.subarray(0, c.storedLength) : Buffer.allocUnsafe(c.storedLength);
    let got = 0;
    while (got < c.storedLength) {
      const n = readSync(this.fds[c.file ?? 0], stored, got, c.storedLength - got, HEADER_SIZE + c.fileOffset + got);
      if (n === 0) throw new TsnapError('badImage', `${this.pathOf(i)}: truncated inside chunk ${i}`);
      got += n;
    }
    return stored;
  }

  private readChunkUnchecked(i: number, into?: Buffer): Buffer {
    const c = this.checkedEntry(i);
    let stored: Buffer;
    this.syncBytes += c.storedLength;
    const native = this.syncBytes > NATIVE_AFTER ? nativePreadCrc32() : null;
    if (native) {
      stored = into && into.length >= c.storedLength ? into.subarray(0, c.storedLength) : Buffer.allocUnsafe(c.storedLength);
      const slot = this.crcSlots.pop() ?? Buffer.allocUnsafeSlow(4);
      try {
        const got = Number(native(this.fds[c.file ?? 0], stored, c.storedLength, HEADER_SIZE + c.fileOffset, slot));
        this.checkNativeRead(i, c, got, slot.readUInt32LE(0));
      } finally {
        this.crcSlots.push(slot);
      }
    } else {
      stored = this.readStored(i, c, into);
      this.checkStored(i, c, stored);
    }
    if (c.codec === 'none') return stored;
    return this.checkRaw(i, c, stored, () => lz4napi().uncompressSync(stored));
  }

  /** tsnap_pread_crc32's answer: the errors readStored and checkStored give (readError names an errno). */
  private checkNativeRead(i: number, c: ChunkEntry, got: number, crc: number): void {
    if (got < 0) throw Object.assign(new Error(`read failed (errno ${-got})`), { code: errnoName(-got) });
    if (got < c.storedLength) throw new TsnapError('badImage', `${this.pathOf(i)}: truncated inside chunk ${i}`);
    this.checkCrc(i, c, crc);
  }

  private checkStored(i: number, c: ChunkEntry, stored: Buffer): void {
    this.checkCrc(i, c, crc32(stored));
  }

  private checkCrc(i: number, c: ChunkEntry, crc: number): void {
    if (crc !== c.crc32) {
      throw new TsnapError('badImage', `${this.pathOf(i)}: chunk ${i} checksum mismatch; the image is corrupted`);
    }
  }

  /** Decodes with `decode` (sync or async) and checks the decoded length. */
  private checkRaw<T extends Buffer | Promise<Buffer>>(i: number, c: ChunkEntry, stored: Buffer, decode: () => T): T {
    const fail = (err: unknown): never => {
      throw new TsnapError('badImage', `${this.pathOf(i)}: chunk ${i} does not decompress (${String((err as Error)?.message ?? err).split('\n')[0]})`);
    };
    const check = (raw: Buffer): Buffer => {
      if (raw.length !== c.rawLength) throw new TsnapError('badImage', `${this.pathOf(i)}: chunk ${i} has ${raw.length} bytes, expected ${c.rawLength}`);
      return raw;
    };
    // The decoder allocates what the length prefix says: check it first.
    if (stored.length < 4 || stored.readUInt32LE(0) !== c.rawLength) {
      return fail(new Error(`length prefix is not ${c.rawLength}`));
    }
    let out: Buffer | Promise<Buffer>;
    try {
      out = decode();
    } catch (err) {
      return fail(err);
    }
    return (out instanceof Promise ? out.then(check, fail) : check(out)) as T;
  }

  /**
   * The address of chunk `i`'s stored bytes in a read-only mapping of its
   * file (the one-copy fill, src/restore/map-fill.ts). The file's length
   * was checked against its header when it was opened, and a chunk past
   * that length is refused here, so every byte asked for is inside the
   * file as it was; a file shrunk since is the native guard's (-EFAULT,
   * checkMapped).
   */
  mappedChunk(i: number, populate = false): bigint {
    const c = this.checkedEntry(i);
    const f = c.file ?? 0;
    let base = this.maps[f] ?? null;
    if (base === null) {
      try {
        base = mapReadOnly(this.fds[f], HEADER_SIZE + this.payloadLengths[f], populate);
      } catch (err) {
        throw this.readError(i, err);
      }
      this.maps[f] = base;
    }
    return base + BigInt(HEADER_SIZE + c.fileOffset);
  }

  /** tsnap_crc_writev's CRC and fault: the errors a read gives (the write's own errors are the caller's). */
  checkMapped(i: number, faulted: boolean, crc: number): void {
    const c = this.checkedEntry(i);
    if (faulted) throw new TsnapError('badImage', `${this.pathOf(i)}: truncated inside chunk ${i} (the file shrank during the restore)`);
    this.checkCrc(i, c, crc);
  }

  close(): void {
    for (let f = 0; f < this.maps.length; f++) {
      const base = this.maps[f];
      if (base !== null && base !== undefined) unmapLater(base, HEADER_SIZE + this.payloadLengths[f]);
    }
    this.maps.length = 0;
    for (const fd of this.fds.splice(0)) closeSync(fd);
  }
}

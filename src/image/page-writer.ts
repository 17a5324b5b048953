/**
 * Writes the pages file: a header, then chunks of page data back to back,
 * each compressed on its own (formats/image-v1.md).
 *
 * The dump fills pool buffers with process_vm_readv on the main thread;
 * one serial writer on libuv's pool writes them out meanwhile, so reading
 * and writing overlap. The writer is the slower of the two (it allocates
 * the page cache), so the pool runs out; then the main thread does not
 * wait for the writer but writes a queued chunk itself: it is never idle
 * while there is work, and on a loaded machine, where the writer's thread
 * gets the CPU late, the dump degrades to read-then-write instead of
 * waiting on a thread that does not run. With lz4, each pool buffer has its own output buffer, and liblz4
 * compresses into it on koffi's worker threads: no allocation per chunk
 * (lz4-napi, which allocates, only when liblz4 is missing).
 *
 * Writing the chunks in place through a shared mapping of the file (one
 * copy fewer) was measured here and cost more CPU than the write: see
 * docs/performance.md.
 *
 * Memory stays bounded at the pool whatever the size of the process.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import { writeSync, openSync, closeSync, fsyncSync } from 'node:fs';
import { lz4napi } from './lz4-napi.js';
import { encodeHeader } from './header.js';
import { crc32 } from './checksum.js';
import { FORMAT_VERSION, FORMAT_VERSION_SPLIT, HEADER_SIZE, FileKind, FILE_NAMES, PAGES_FILES, type ChunkEntry, type Compression } from '../../formats/schema.js';
import { withPath } from '../errors.js';
import { nativeLz4, lz4CompressInto } from '../sys/lz4.js';

export const DEFAULT_CHUNK_SIZE = 1 << 20;

/**
 * Chunks per write of the serial writer: batching pays the thread-pool hop
 * once per batch, but a batch taken is out of the main thread's reach.
 */
const MAX_BATCH = 4;

/**
 * Raw bytes in flight: enough for the reader to stay a few chunks ahead of
 * the writer and of compression on two cores (the main thread writes when
 * the writer lags); more only adds to the tool's RSS.
 */
const POOL_BYTES = 4 << 20;

interface Queued {
  entry: ChunkEntry;
  stored: Buffer;
  buf: Buffer;
}

export class PageFileWriter {
  readonly chunks: ChunkEntry[] = [];
  private readonly free: Buffer[] = [];
  /** Each pool buffer's lz4 output. */
  private readonly outOf = new Map<Buffer, Buffer>();
  private waiters: (() => void)[] = [];
  private queue: Queued[] = [];
  private writing = false;
  private outstanding = 0; // submitted, not yet written
  private nextOffset = 0;
  private failure: unknown = null;
  bytesRaw = 0;
  bytesStored = 0;

  private constructor(
    private readonly fh: FileHandle,
    readonly path: string,
    readonly compression: Compression,
    readonly chunkSize: number,
    poolSize: number,
  ) {
    // Only the buffer the first chunk takes (acquire pops the last) is
    // faulted in ahead: a small process fits in it, and faulting the whole
    // pool was most of a 1 MiB dump's setup. The others fault in as the
    // copy first fills them, once the process is big enough to need them
    // (Buffer.alloc: calloc, whose fresh mappings are zero untouched).
    for (let i = 0; i < poolSize; i++) this.free.push(i === poolSize - 1 ? touched(chunkSize) : Buffer.alloc(chunkSize));
    if (compression === 'lz4' && nativeLz4()) for (const b of this.free) this.outOf.set(b, b === this.free[poolSize - 1] ? touched(chunkSize) : Buffer.alloc(chunkSize));
  }

  static async create(dir: string, compression: Compression, chunkSize = DEFAULT_CHUNK_SIZE): Promise<PageFileWriter> {
    const path = join(dir, FILE_NAMES[FileKind.Pages]);
    const fh = await open(path, 'wx', 0o600);
    try {
      await fh.write(Buffer.alloc(HEADER_SIZE), 0, HEADER_SIZE, 0);
      // (koffi queues at most 256 calls: small chunks get fewer buffers.)
      // With lz4 each buffer has an output as large: half as many buffers
      // keep the bytes in flight the same (1 GiB: 2 measured as fast as 4,
      // 1.5 MiB less RSS).
      const lz4 = compression === 'lz4' && nativeLz4();
      const pool = Math.min(64, Math.max(lz4 ? 2 : 4, Math.ceil((lz4 ? POOL_BYTES / 2 : POOL_BYTES) / chunkSize)));
      return new PageFileWriter(fh, path, compression, chunkSize, pool);
    } catch (err) {
      await fh.close().catch(() => {});
      throw withPath(err, path);
    }
  }

  /** A free chunk buffer; waits until a written chunk returns one. */
  async acquire(): Promise<Buffer> {
    while (this.free.length === 0) {
      this.throwIfFailed();
      // Rather than wait for the writer, write a chunk it has not taken yet.
      if (this.queue.length) { this.writeNow(this.queue.shift()!); continue; }
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    this.throwIfFailed();
    return this.free.pop()!;
  }

  /**
   * Queues `rawLength` bytes of `buf` (from acquire) as the next chunk and
   * returns its index. The buffer returns to the pool once written.
   */
  submit(buf: Buffer, rawLength: number): number {
    this.throwIfFailed();
    const index = this.chunks.length;
    const entry: ChunkEntry = { fileOffset: 0, storedLength: 0, rawLength, codec: 'none', crc32: 0 };
    this.chunks.push(entry);
    this.bytesRaw += rawLength;
    this.outstanding++;
    const raw = buf.subarray(0, rawLength);
    if (this.compression === 'lz4') {
      // Compression runs on worker threads; chunks may finish out of order,
      // which the chunk table's fileOffset allows.
      const out = this.outOf.get(buf);
      const done = out
        ? lz4CompressInto(raw, out).then((n) => (n ? out.subarray(0, n) : raw))
        : lz4napi().compress(raw).then((c) => (c.length < rawLength ? c : raw));
      done.then(
        (stored) => this.enqueue(entry, stored, buf, stored === raw ? 'none' : 'lz4'),
        (err) => this.fail(err, buf),
      );
    } else {
      this.enqueue(entry, raw, buf, 'none');
    }
    return index;
  }

  /**
   * Room for the next chunk, `rawLength` bytes stored raw, that the caller
   * writes itself at `position` of `fd` and whose CRC it sets on `entry`
   * (the one-copy dump splices page data there: src/dump/splice-copy.ts).
   * `file` 1 puts it in the second pages file (`pages.1`, made on first
   * use; the image is then format 2), which another thread can write while
   * this one writes `pages`: a write into one file holds its inode lock.
   * Not mixed with submit(): only while nothing is queued.
   */
  reserveRaw(rawLength: number, file: 0 | 1 = 0): { index: number; entry: ChunkEntry; fd: number; position: number; path: string } {
    this.throwIfFailed();
    if (this.compression !== 'none' || this.outstanding > 0) throw new Error('reserveRaw: only for uncompressed chunks, with nothing queued');
    const index = this.chunks.length;
    if (file === 1) {
      const second = this.second ?? this.openSecond();
      const entry: ChunkEntry = { fileOffset: second.nextOffset, storedLength: rawLength, rawLength, codec: 'none', crc32: 0, file: 1 };
      this.chunks.push(entry);
      const position = HEADER_SIZE + second.nextOffset;
      second.nextOffset += rawLength;
      this.bytesRaw += rawLength;
      this.bytesStored += rawLength;
      return { index, entry, fd: second.fd, position, path: second.path };
    }
    const entry: ChunkEntry = { fileOffset: this.nextOffset, storedLength: rawLength, rawLength, codec: 'none', crc32: 0 };
    this.chunks.push(entry);
    const position = HEADER_SIZE + this.nextOffset;
    this.nextOffset += rawLength;
    this.bytesRaw += rawLength;
    this.bytesStored += rawLength;
    return { index, entry, fd: this.fh.fd, position, path: this.path };
  }

  /** The second pages file, once a chunk went there (format 2). */
  private second: { fd: number; path: string; nextOffset: number } | null = null;

  /** How many pages files the image has: 1, or 2 once reserveRaw put a chunk in `pages.1`. */
  get files(): number {
    return this.second ? 2 : 1;
  }

  /** Bytes of page data in pages file `f`. */
  storedIn(f: number): number {
    return f === 0 ? this.nextOffset : this.second?.nextOffset ?? 0;
  }

  private openSecond(): { fd: number; path: string; nextOffset: number } {
    const path = join(dirname(this.path), PAGES_FILES[1]);
    let fd = -1;
    try {
      fd = openSync(path, 'wx', 0o600);
      // Its header once its length is known (finish); the room for it now.
      if (writeSync(fd, Buffer.alloc(HEADER_SIZE), 0, HEADER_SIZE, 0) !== HEADER_SIZE) throw Object.assign(new Error('short write'), { code: 'EIO' });
    } catch (err) {
      if (fd >= 0) closeSync(fd);
      throw withPath(err, path);
    }
    this.second = { fd, path, nextOffset: 0 };
    return this.second;
  }

  private enqueue(entry: ChunkEntry, stored: Buffer, buf: Buffer, codec: Compression): void {
    entry.codec = codec;
    entry.crc32 = crc32(stored);
    entry.storedLength = stored.length;
    this.queue.push({ entry, stored, buf });
    this.pump();
  }

  /**
   * One write at a time, each taking every chunk queued so far in one
   * writev: parallel writes to one file only fight over its inode lock,
   * and batching pays the thread-pool hop once per batch, not per chunk.
   */
  private pump(): void {
    if (this.writing || this.queue.length === 0 || this.failure) return;
    this.writing = true;
    const batch = this.queue.splice(0, MAX_BATCH);
    const position = HEADER_SIZE + this.nextOffset;
    for (const q of batch) {
      q.entry.fileOffset = this.nextOffset;
      this.nextOffset += q.stored.length;
      this.bytesStored += q.stored.length;
    }
    writevFully(this.fh, batch.map((q) => q.stored), position).then(
      () => {
        this.writing = false;
        this.outstanding -= batch.length;
        for (const q of batch) this.release(q.buf);
        this.pump();
      },
      (err) => {
        this.writing = false;
        this.outstanding -= batch.length;
        for (const q of batch) this.fail(withPath(err, this.path), q.buf);
      },
    );
  }

  /** Writes one queued chunk on this thread, at the next free place. */
  private writeNow(q: Queued): void {
    const at = this.nextOffset;
    q.entry.fileOffset = at;
    this.nextOffset += q.stored.length;
    this.bytesStored += q.stored.length;
    this.outstanding--;
    try {
      for (let done = 0; done < q.stored.length;) {
        const n = writeSync(this.fh.fd, q.stored, done, q.stored.length - done, HEADER_SIZE + at + done);
        if (n === 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
        done += n;
      }
    } catch (err) {
      this.fail(withPath(err, this.path), q.buf);
      return;
    }
    this.release(q.buf);
  }

  private release(buf: Buffer): void {
    this.free.push(buf);
    const w = this.waiters;
    this.waiters = [];
    for (const resolve of w) resolve();
  }

  private fail(err: unknown, buf: Buffer): void {
    this.failure ??= err;
    this.release(buf);
  }

  /** Work on reserved chunks still under way (their CRCs), which finish() waits for. */
  private readonly reservedWork: Promise<unknown>[] = [];

  /** finish() waits for `work` too, and fails with it (reserveRaw's chunks). */
  waitFor(work: Promise<unknown>): void {
    work.catch(() => { /* seen by finish(); an aborted dump does not wait */ });
    this.reservedWork.push(work);
  }

  /** Waits for every chunk, writes the headers, optionally fsyncs; returns the payload length of `pages`. */
  async finish(fsync: boolean): Promise<number> {
    while (this.outstanding > 0 && !this.failure) {
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    this.throwIfFailed();
    for (const w of this.reservedWork.splice(0)) await w;
    const header = encodeHeader({ version: FORMAT_VERSION, kind: FileKind.Pages, flags: 0, payloadLength: this.nextOffset, payloadCrc: 0 });
    try {
      await writevFully(this.fh, [header], 0);
      if (fsync) await this.fh.sync();
    } catch (err) {
      throw withPath(err, this.path);
    }
    await this.fh.close();
    if (this.second) {
      const s = this.second;
      const h = encodeHeader({ version: FORMAT_VERSION_SPLIT, kind: FileKind.Pages, flags: 0, payloadLength: s.nextOffset, payloadCrc: 0 });
      try {
        if (writeSync(s.fd, h, 0, HEADER_SIZE, 0) !== HEADER_SIZE) throw Object.assign(new Error('short write'), { code: 'EIO' });
        if (fsync) fsyncSync(s.fd);
      } catch (err) {
        throw withPath(err, s.path);
      }
      this.closeSecond();
    }
    return this.nextOffset;
  }

  /** Stops after a failure elsewhere: lets writes settle and closes the file. */
  async abort(): Promise<void> {
    this.failure ??= new Error('aborted');
    while (this.writing) await new Promise<void>((resolve) => this.waiters.push(resolve));
    await this.fh.close().catch(() => {});
    this.closeSecond();
  }

  private closeSecond(): void {
    if (this.second && this.second.fd >= 0) {
      try { closeSync(this.second.fd); } catch { /* closed */ }
      this.second.fd = -1;
    }
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }
}

/** A buffer whose pages are faulted in now, not in the frozen window. */
function touched(size: number): Buffer {
  const b = Buffer.allocUnsafeSlow(size);
  b.fill(0);
  return b;
}

async function writevFully(fh: FileHandle, bufs: Buffer[], position: number): Promise<void> {
  let pending = bufs;
  let pos = position;
  while (pending.length) {
    const { bytesWritten } = await fh.writev(pending, pos);
    if (bytesWritten === 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
    pos += bytesWritten;
    let skip = bytesWritten;
    const rest: Buffer[] = [];
    for (const b of pending) {
      if (skip >= b.length) { skip -= b.length; continue; }
      rest.push(skip ? b.subarray(skip) : b);
      skip = 0;
    }
    pending = rest;
  }
}

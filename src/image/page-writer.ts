/**
 * Writes the pages file: a header, then chunks of page data back to back,
 * each compressed on its own (formats/image-v1.md). The layout is the same
 * whichever way the bytes get there; what differs is how many times the
 * data is copied and who waits for whom.
 *
 * - Uncompressed, on a filesystem with fallocate() (tmpfs, ext4, xfs...):
 *   acquire() hands out a view of a shared mapping of the file itself at
 *   the chunk's final place, so process_vm_readv copies the target's pages
 *   straight into the page cache and there is no write at all. Space is
 *   reserved and page tables filled a window or two ahead, on a pool
 *   thread, while the current window is being filled: the copy never
 *   waits for a writer, and takes no page faults. Windows behind are
 *   dropped from the tool's RSS (MADV_DONTNEED) as the tail moves on.
 * - lz4: each pool buffer has its own output buffer; liblz4 compresses into
 *   it on koffi's worker threads and one serial writer writes it out. No
 *   allocation per chunk. Without liblz4, lz4-napi (which allocates).
 * - Uncompressed elsewhere (or TSNAP_PAGE_WRITE=1): the pool is written
 *   with pwritev, as with lz4.
 *
 * Memory stays bounded whatever the size of the process: a few windows, or
 * the pool.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { compress as lz4NapiCompress } from 'lz4-napi';
import { encodeHeader } from './header.js';
import { crc32 } from './checksum.js';
import { FORMAT_VERSION, HEADER_SIZE, FileKind, FILE_NAMES, type ChunkEntry, type Compression } from '../../formats/schema.js';
import { withPath } from '../errors.js';
import { FileMapping, fallocateAsync, fallocateSync, truncateFd, SysError } from '../sys/index.js';
import { nativeLz4, lz4CompressInto } from '../sys/lz4.js';
import { PAGE_SIZE } from '../sys/uapi.js';

export const DEFAULT_CHUNK_SIZE = 1 << 20;

/**
 * The mapped tail: address space is mapped a segment at a time (one mmap per
 * SEGMENT: mmap and munmap take the address-space lock for writing, which
 * stalls the copy's own faults); the file grows a segment at a time (one
 * ftruncate); the space is reserved, and the page tables filled, a STEP at
 * a time, AHEAD steps in front of the copy, and steps behind it are dropped
 * from the RSS, all on pool threads.
 */
const SEGMENT = 64 << 20;
const STEP = Number(process.env.TSNAP_MAP_STEP ?? (2 << 20));
const AHEAD = Number(process.env.TSNAP_MAP_AHEAD ?? 3);
const POPULATE = process.env.TSNAP_MAP_POPULATE !== '0';
const RELEASE = process.env.TSNAP_MAP_RELEASE !== '0';

interface Queued {
  entry: ChunkEntry;
  stored: Buffer;
  buf: Buffer;
}

const alignUp = (n: number, to = PAGE_SIZE) => Math.ceil(n / to) * to;

/**
 * The end of the pages file, mapped: segment k maps file bytes
 * [k*SEGMENT, (k+1)*SEGMENT + chunkSize), so that any chunk starting in a
 * segment lies wholly inside its mapping.
 */
class MappedTail {
  private readonly segments = new Map<number, FileMapping>();
  /** Step index -> 0 once reserved, else the errno. */
  private readonly steps = new Map<number, Promise<number>>();
  private readonly slack: number;
  private size = 0;
  private releasedBelow = 0;
  private inFlight = 0;
  private idle: (() => void)[] = [];

  private constructor(private readonly fd: number, chunkSize: number) {
    this.slack = alignUp(chunkSize);
  }

  /** Reserves and maps the start of the file, or says it cannot be written this way (then nothing is left mapped). */
  static open(fd: number, chunkSize: number): MappedTail | null {
    const t = new MappedTail(fd, chunkSize);
    try {
      t.grow(STEP);
      if (fallocateSync(fd, 0, STEP) !== 0) throw new Error('no fallocate');
      t.segment(0);
      t.steps.set(0, Promise.resolve(0));
      return t;
    } catch {
      for (const m of t.segments.values()) m.unmap();
      truncateFd(fd, HEADER_SIZE);
      return null;
    }
  }

  /** `len` bytes (at most chunkSize) of the file at `fileOffset`, writable in place. */
  async view(fileOffset: number, len: number): Promise<Buffer> {
    const first = Math.floor(fileOffset / STEP);
    const last = Math.floor((fileOffset + len - 1) / STEP);
    for (let i = first; i <= last + AHEAD; i++) this.prepare(i);
    // The tail only moves forward: what lies wholly before it is in.
    if (RELEASE) for (; this.releasedBelow < first; this.releasedBelow++) this.release(this.releasedBelow);
    for (let i = first; i <= last; i++) {
      const errno = await this.steps.get(i)!;
      if (errno) throw new SysError(`fallocate(pages, ${i * STEP}, ${STEP})`, errno);
    }
    const k = Math.floor(fileOffset / SEGMENT);
    const at = fileOffset - k * SEGMENT;
    return this.segment(k).buf.subarray(at, at + len);
  }

  private segment(k: number): FileMapping {
    let m = this.segments.get(k);
    if (!m) { m = FileMapping.map(this.fd, k * SEGMENT, SEGMENT + this.slack); this.segments.set(k, m); }
    return m;
  }

  /** The file must cover a range before any of it is touched (SIGBUS past the end). */
  private grow(end: number): void {
    if (end <= this.size) return;
    this.size = alignUp(end, SEGMENT);
    truncateFd(this.fd, this.size);
  }

  private prepare(i: number): void {
    if (this.steps.has(i)) return;
    const start = i * STEP;
    this.grow(start + STEP);
    const map = this.segment(Math.floor(start / SEGMENT));
    this.inFlight++;
    this.steps.set(i, fallocateAsync(this.fd, start, STEP).then((errno) => {
      if (errno) { this.settled(); return errno; }
      if (POPULATE) map.populateAsync(start - map.offset, STEP, () => this.settled()); else this.settled();
      return 0;
    }));
  }

  /** Drops step i from every mapping that covers it. */
  private release(i: number): void {
    const start = i * STEP;
    for (const k of [Math.floor(start / SEGMENT) - 1, Math.floor(start / SEGMENT)]) {
      const m = this.segments.get(k);
      if (!m || start + STEP <= m.offset || start >= m.offset + m.len) continue;
      const from = Math.max(start, m.offset);
      const to = Math.min(start + STEP, m.offset + m.len);
      this.inFlight++;
      m.releaseAsync(from - m.offset, to - from, () => this.settled());
    }
  }

  private settled(): void {
    if (--this.inFlight > 0) return;
    const w = this.idle;
    this.idle = [];
    for (const r of w) r();
  }

  /** Waits for the pool threads, unmaps everything and cuts the file to `length` (null: as it is). */
  async close(length: number | null): Promise<void> {
    while (this.inFlight > 0) await new Promise<void>((resolve) => this.idle.push(resolve));
    for (const m of this.segments.values()) m.unmap();
    this.segments.clear();
    if (length !== null) truncateFd(this.fd, length);
  }
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
  /** The mapped view handed out by acquire() and not yet submitted, and where it lies. */
  private view: { buf: Buffer; at: number } | null = null;
  /** Chunks submitted in pool buffers while a view was out: placed once it is in. */
  private deferred: { entry: ChunkEntry; buf: Buffer; rawLength: number }[] = [];
  bytesRaw = 0;
  bytesStored = 0;

  private constructor(
    private readonly fh: FileHandle,
    readonly path: string,
    readonly compression: Compression,
    readonly chunkSize: number,
    private readonly tail: MappedTail | null,
    poolSize: number,
  ) {
    for (let i = 0; i < poolSize; i++) this.free.push(touched(chunkSize));
    if (compression === 'lz4' && nativeLz4()) for (const b of this.free) this.outOf.set(b, touched(chunkSize));
  }

  static async create(dir: string, compression: Compression, chunkSize = DEFAULT_CHUNK_SIZE): Promise<PageFileWriter> {
    const path = join(dir, FILE_NAMES[FileKind.Pages]);
    // Read-write: a shared writable mapping needs it.
    const fh = await open(path, 'wx+', 0o600);
    try {
      await fh.write(Buffer.alloc(HEADER_SIZE), 0, HEADER_SIZE, 0);
      const tail = compression === 'none' && process.env.TSNAP_PAGE_WRITE !== '1' ? MappedTail.open(fh.fd, chunkSize) : null;
      // In place, the pool only serves a second acquire() before a submit.
      // Written, 8 MiB in flight lets the reader run ahead of compression
      // and writing on two cores.
      // (koffi queues at most 256 calls: small chunks get fewer buffers.)
      const pool = tail ? 1 : Math.min(64, Math.max(4, Math.ceil((8 << 20) / chunkSize)));
      return new PageFileWriter(fh, path, compression, chunkSize, tail, pool);
    } catch (err) {
      await fh.close().catch(() => {});
      throw withPath(err, path);
    }
  }

  /** A chunk buffer to fill: in place in the file when possible, else a free pool buffer (waiting for one if all are in flight). */
  async acquire(): Promise<Buffer> {
    this.throwIfFailed();
    if (this.tail && !this.view) {
      const at = this.nextOffset;
      let buf: Buffer;
      try {
        buf = await this.tail.view(HEADER_SIZE + at, this.chunkSize);
      } catch (err) {
        this.failure ??= withPath(err, this.path);
        throw this.failure;
      }
      this.view = { buf, at };
      return buf;
    }
    while (this.free.length === 0) {
      this.throwIfFailed();
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    this.throwIfFailed();
    return this.free.pop()!;
  }

  /**
   * Queues `rawLength` bytes of `buf` (from acquire) as the next chunk and
   * returns its index. A pool buffer returns to the pool once written.
   */
  submit(buf: Buffer, rawLength: number): number {
    this.throwIfFailed();
    const index = this.chunks.length;
    const entry: ChunkEntry = { fileOffset: 0, storedLength: 0, rawLength, codec: 'none', crc32: 0 };
    this.chunks.push(entry);
    this.bytesRaw += rawLength;
    if (this.tail) {
      if (this.view && buf === this.view.buf) {
        // In place already: only the chunk table learns of it.
        this.placed(entry, buf.subarray(0, rawLength), this.view.at);
        this.nextOffset = this.view.at + rawLength;
        this.view = null;
        this.placeDeferred();
      } else {
        this.deferred.push({ entry, buf, rawLength });
        if (!this.view) this.placeDeferred();
      }
      return index;
    }
    this.outstanding++;
    const raw = buf.subarray(0, rawLength);
    if (this.compression === 'lz4') {
      // Compression runs on worker threads; chunks may finish out of order,
      // which the chunk table's fileOffset allows.
      const out = this.outOf.get(buf);
      const done = out
        ? lz4CompressInto(raw, out).then((n) => (n ? out.subarray(0, n) : raw))
        : lz4NapiCompress(raw).then((c) => (c.length < rawLength ? c : raw));
      done.then(
        (stored) => this.enqueue(entry, stored, buf, stored === raw ? 'none' : 'lz4'),
        (err) => this.fail(err, buf),
      );
    } else {
      this.enqueue(entry, raw, buf, 'none');
    }
    return index;
  }

  private placed(entry: ChunkEntry, stored: Buffer, at: number): void {
    entry.codec = 'none';
    entry.crc32 = crc32(stored);
    entry.storedLength = stored.length;
    entry.fileOffset = at;
    this.bytesStored += stored.length;
  }

  /**
   * Copies chunks that came in pool buffers to the tail, each at the next
   * free place. Only while no view is out: its place is the next free one.
   */
  private placeDeferred(): void {
    for (const d of this.deferred.splice(0)) {
      const at = this.nextOffset;
      this.nextOffset += d.rawLength;
      this.outstanding++;
      this.tail!.view(HEADER_SIZE + at, d.rawLength).then(
        (dest) => {
          this.outstanding--;
          // After a failure the mapping may be gone.
          if (!this.failure) {
            d.buf.copy(dest, 0, 0, d.rawLength);
            this.placed(d.entry, dest, at);
          }
          this.release(d.buf);
        },
        (err) => { this.outstanding--; this.fail(withPath(err, this.path), d.buf); },
      );
    }
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
    const batch = this.queue;
    this.queue = [];
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

  /** Waits for every chunk, writes the header, optionally fsyncs; returns the payload length. */
  async finish(fsync: boolean): Promise<number> {
    while (this.outstanding > 0 && !this.failure) {
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    if (this.tail) {
      this.view = null;
      try {
        await this.tail.close(this.failure ? null : HEADER_SIZE + this.nextOffset);
      } catch (err) {
        this.failure ??= withPath(err, this.path);
      }
    }
    this.throwIfFailed();
    const header = encodeHeader({ version: FORMAT_VERSION, kind: FileKind.Pages, flags: 0, payloadLength: this.nextOffset, payloadCrc: 0 });
    try {
      await writevFully(this.fh, [header], 0);
      if (fsync) await this.fh.sync();
    } catch (err) {
      throw withPath(err, this.path);
    }
    await this.fh.close();
    return this.nextOffset;
  }

  /** Stops after a failure elsewhere: lets writes settle, unmaps and closes the file. */
  async abort(): Promise<void> {
    this.failure ??= new Error('aborted');
    while (this.writing) await new Promise<void>((resolve) => this.waiters.push(resolve));
    this.view = null;
    await this.tail?.close(null).catch(() => {});
    await this.fh.close().catch(() => {});
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

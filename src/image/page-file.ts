/**
 * The pages file: a header, then chunks of page data back to back, each
 * compressed on its own so that chunks compress and decompress in parallel
 * and any page can be read without the rest of the file.
 *
 * The writer keeps a small pool of chunk buffers: the dump fills one with
 * process_vm_readv while earlier ones are compressed (lz4 runs on libuv's
 * thread pool, i.e. on the other core) and written. Memory stays bounded at
 * pool size x chunk size whatever the size of the process.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { openSync, readSync, fstatSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { compress as lz4Compress, uncompress as lz4UncompressAsync, uncompressSync as lz4Uncompress } from 'lz4-napi';
import { read as fsRead } from 'node:fs';
import { encodeHeader, decodeHeader } from './header.js';
import { crc32 } from './checksum.js';
import { FORMAT_VERSION, HEADER_SIZE, FileKind, FILE_NAMES, type ChunkEntry, type Compression } from '../../formats/schema.js';
import { TsnapError, withPath } from '../errors.js';

export const DEFAULT_CHUNK_SIZE = 1 << 20;

interface Queued {
  entry: ChunkEntry;
  stored: Buffer;
  buf: Buffer;
}

export class PageFileWriter {
  readonly chunks: ChunkEntry[] = [];
  private readonly free: Buffer[] = [];
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
    for (let i = 0; i < poolSize; i++) {
      const b = Buffer.allocUnsafeSlow(chunkSize);
      b.fill(0); // touch now: first-touch faults would otherwise land in the frozen window
      this.free.push(b);
    }
  }

  static async create(dir: string, compression: Compression, chunkSize = DEFAULT_CHUNK_SIZE): Promise<PageFileWriter> {
    const path = join(dir, FILE_NAMES[FileKind.Pages]);
    const fh = await open(path, 'wx', 0o600);
    await fh.write(Buffer.alloc(HEADER_SIZE), 0, HEADER_SIZE, 0);
    // 16 MiB in flight lets the reader run ahead of compression and writing.
    const pool = Math.max(4, Math.ceil((16 << 20) / chunkSize));
    return new PageFileWriter(fh, path, compression, chunkSize, pool);
  }

  /** A free chunk buffer; waits until a written chunk returns one. */
  async acquire(): Promise<Buffer> {
    while (this.free.length === 0) {
      this.throwIfFailed();
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
      // Compression runs on libuv's pool; chunks may finish out of order,
      // which the chunk table's fileOffset allows.
      lz4Compress(raw).then(
        (c) => this.enqueue(entry, c.length < rawLength ? c : raw, buf, c.length < rawLength ? 'lz4' : 'none'),
        (err) => this.fail(err, buf),
      );
    } else {
      // Checksum now, while the chunk is still in the CPU cache.
      this.enqueue(entry, raw, buf, 'none');
    }
    return index;
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

  /** Stops after a failure elsewhere: lets writes settle and closes the file. */
  async abort(): Promise<void> {
    this.failure ??= new Error('aborted');
    while (this.writing) await new Promise<void>((resolve) => this.waiters.push(resolve));
    await this.fh.close().catch(() => {});
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }
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

/** Random access to the chunks of a pages file, each checked against its CRC. */
export class PageFileReader {
  private readonly fd: number;
  readonly payloadLength: number;

  constructor(readonly dir: string, private readonly chunks: ChunkEntry[]) {
    const path = join(dir, FILE_NAMES[FileKind.Pages]);
    try {
      this.fd = openSync(path, 'r');
    } catch (err) {
      throw new TsnapError('badImage', `${path}: missing or unreadable (${(err as NodeJS.ErrnoException).code}); the image is incomplete`);
    }
    try {
      const head = Buffer.alloc(HEADER_SIZE);
      const got = readSync(this.fd, head, 0, HEADER_SIZE, 0);
      const h = decodeHeader(head.subarray(0, got), path, FileKind.Pages);
      this.payloadLength = h.payloadLength;
      const size = fstatSync(this.fd).size;
      if (size !== HEADER_SIZE + h.payloadLength) {
        throw new TsnapError('badImage', `${path}: ${size < HEADER_SIZE + h.payloadLength ? 'truncated' : 'has data past its end'} (${size} bytes, expected ${HEADER_SIZE + h.payloadLength}); the image is damaged`);
      }
    } catch (err) {
      closeSync(this.fd);
      throw err;
    }
    this.path = path;
  }
  readonly path: string;

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
    let got = 0;
    while (got < c.storedLength) {
      const n = await new Promise<number>((resolve, reject) => {
        fsRead(this.fd, stored, got, c.storedLength - got, HEADER_SIZE + c.fileOffset + got, (err, bytes) => (err ? reject(err) : resolve(bytes)));
      });
      if (n === 0) throw new TsnapError('badImage', `${this.path}: truncated inside chunk ${i}`);
      got += n;
    }
    this.checkStored(i, c, stored);
    if (c.codec === 'none') return stored;
    return this.checkRaw(i, c, stored, () => lz4UncompressAsync(stored));
  }

  private checkedEntry(i: number): ChunkEntry {
    const c = this.chunks[i];
    if (!c) throw new TsnapError('badImage', `${this.path}: chunk ${i} is not in the index`);
    if (c.fileOffset + c.storedLength > this.payloadLength) {
      throw new TsnapError('badImage', `${this.path}: chunk ${i} lies past the end of the data; the image is damaged`);
    }
    return c;
  }

  /** The uncompressed bytes of chunk `i`. */
  readChunk(i: number): Buffer {
    try {
      return this.readChunkUnchecked(i);
    } catch (err) {
      throw this.readError(i, err);
    }
  }

  /** Any failure to produce a chunk (I/O included) is a bad image, in one line. */
  private readError(i: number, err: unknown): TsnapError {
    if (err instanceof TsnapError) return err;
    const e = err as NodeJS.ErrnoException;
    return new TsnapError('badImage', `${this.path}: chunk ${i} cannot be read (${e?.code ?? String(e?.message ?? err).split('\n')[0]})`, err);
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
        throw new TsnapError('badImage', `${this.path}: chunk ${i} does not decompress (length prefix is not ${c.rawLength})`);
      }
    } catch (err) {
      throw this.readError(i, err);
    }
  }

  private readStored(i: number, c: ChunkEntry, into?: Buffer): Buffer {
    const stored = into && into.length >= c.storedLength ? into.subarray(0, c.storedLength) : Buffer.allocUnsafe(c.storedLength);
    let got = 0;
    while (got < c.storedLength) {
      const n = readSync(this.fd, stored, got, c.storedLength - got, HEADER_SIZE + c.fileOffset + got);
      if (n === 0) throw new TsnapError('badImage', `${this.path}: truncated inside chunk ${i}`);
      got += n;
    }
    return stored;
  }

  private readChunkUnchecked(i: number): Buffer {
    const c = this.checkedEntry(i);
    const stored = Buffer.allocUnsafe(c.storedLength);
    let got = 0;
    while (got < c.storedLength) {
      const n = readSync(this.fd, stored, got, c.storedLength - got, HEADER_SIZE + c.fileOffset + got);
      if (n === 0) throw new TsnapError('badImage', `${this.path}: truncated inside chunk ${i}`);
      got += n;
    }
    this.checkStored(i, c, stored);
    if (c.codec === 'none') return stored;
    return this.checkRaw(i, c, stored, () => lz4Uncompress(stored));
  }

  private checkStored(i: number, c: ChunkEntry, stored: Buffer): void {
    if (crc32(stored) !== c.crc32) {
      throw new TsnapError('badImage', `${this.path}: chunk ${i} checksum mismatch; the image is corrupted`);
    }
  }

  /** Decodes with `decode` (sync or async) and checks the decoded length. */
  private checkRaw<T extends Buffer | Promise<Buffer>>(i: number, c: ChunkEntry, stored: Buffer, decode: () => T): T {
    const fail = (err: unknown): never => {
      throw new TsnapError('badImage', `${this.path}: chunk ${i} does not decompress (${String((err as Error)?.message ?? err).split('\n')[0]})`);
    };
    const check = (raw: Buffer): Buffer => {
      if (raw.length !== c.rawLength) throw new TsnapError('badImage', `${this.path}: chunk ${i} has ${raw.length} bytes, expected ${c.rawLength}`);
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

  close(): void {
    closeSync(this.fd);
  }
}

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
import { compress as lz4Compress, uncompressSync as lz4Uncompress } from 'lz4-napi';
import { encodeHeader, decodeHeader } from './header.js';
import { crc32 } from './checksum.js';
import { FORMAT_VERSION, HEADER_SIZE, FileKind, FILE_NAMES, type ChunkEntry, type Compression } from '../../formats/schema.js';
import { TsnapError } from '../errors.js';

export const DEFAULT_CHUNK_SIZE = 1 << 20;

export class PageFileWriter {
  readonly chunks: ChunkEntry[] = [];
  private readonly free: Buffer[] = [];
  private readonly inFlight: Promise<void>[] = [];
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
    return new PageFileWriter(fh, path, compression, chunkSize, compression === 'lz4' ? 8 : 6);
  }

  /** A free chunk buffer; waits for the oldest chunk in flight when none is free. */
  async acquire(): Promise<Buffer> {
    while (this.free.length === 0) {
      this.throwIfFailed();
      await this.inFlight.shift();
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
    const raw = buf.subarray(0, rawLength);
    const done = (async () => {
      let stored = raw;
      if (this.compression === 'lz4') {
        const c = await lz4Compress(raw);
        if (c.length < rawLength) {
          stored = c;
          entry.codec = 'lz4';
        }
      }
      entry.crc32 = crc32(stored);
      entry.storedLength = stored.length;
      entry.fileOffset = this.nextOffset;
      this.nextOffset += stored.length;
      this.bytesStored += stored.length;
      await writeFully(this.fh, stored, HEADER_SIZE + entry.fileOffset);
    })().then(
      () => { this.free.push(buf); },
      (err) => { this.failure ??= err; this.free.push(buf); },
    );
    this.inFlight.push(done);
    return index;
  }

  /** Waits for every chunk, writes the header, optionally fsyncs; returns the payload length. */
  async finish(fsync: boolean): Promise<number> {
    await Promise.all(this.inFlight.splice(0));
    this.throwIfFailed();
    const header = encodeHeader({ version: FORMAT_VERSION, kind: FileKind.Pages, flags: 0, payloadLength: this.nextOffset, payloadCrc: 0 });
    await writeFully(this.fh, header, 0);
    if (fsync) await this.fh.sync();
    await this.fh.close();
    return this.nextOffset;
  }

  /** Stops after a failure elsewhere: lets writes settle and closes the file. */
  async abort(): Promise<void> {
    await Promise.allSettled(this.inFlight.splice(0));
    await this.fh.close().catch(() => {});
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }
}

async function writeFully(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  let off = 0;
  while (off < data.length) {
    const { bytesWritten } = await fh.write(data, off, data.length - off, position + off);
    if (bytesWritten === 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
    off += bytesWritten;
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
    const head = Buffer.alloc(HEADER_SIZE);
    readSync(this.fd, head, 0, HEADER_SIZE, 0);
    const h = decodeHeader(head, path, FileKind.Pages);
    this.payloadLength = h.payloadLength;
    const size = fstatSync(this.fd).size;
    if (size < HEADER_SIZE + h.payloadLength) {
      closeSync(this.fd);
      throw new TsnapError('badImage', `${path}: truncated (${size} bytes, expected ${HEADER_SIZE + h.payloadLength}); the image is damaged`);
    }
    this.path = path;
  }
  readonly path: string;

  /** The uncompressed bytes of chunk `i`. */
  readChunk(i: number): Buffer {
    const c = this.chunks[i];
    if (!c) throw new TsnapError('badImage', `${this.path}: chunk ${i} is not in the index`);
    if (c.fileOffset + c.storedLength > this.payloadLength) {
      throw new TsnapError('badImage', `${this.path}: chunk ${i} lies past the end of the data; the image is damaged`);
    }
    const stored = Buffer.allocUnsafe(c.storedLength);
    let got = 0;
    while (got < c.storedLength) {
      const n = readSync(this.fd, stored, got, c.storedLength - got, HEADER_SIZE + c.fileOffset + got);
      if (n === 0) throw new TsnapError('badImage', `${this.path}: truncated inside chunk ${i}`);
      got += n;
    }
    if (crc32(stored) !== c.crc32) {
      throw new TsnapError('badImage', `${this.path}: chunk ${i} checksum mismatch; the image is corrupted`);
    }
    if (c.codec === 'none') return stored;
    let raw: Buffer;
    try {
      raw = lz4Uncompress(stored);
    } catch (err) {
      throw new TsnapError('badImage', `${this.path}: chunk ${i} does not decompress (${(err as Error).message})`);
    }
    if (raw.length !== c.rawLength) throw new TsnapError('badImage', `${this.path}: chunk ${i} has ${raw.length} bytes, expected ${c.rawLength}`);
    return raw;
  }

  close(): void {
    closeSync(this.fd);
  }
}

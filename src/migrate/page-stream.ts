/**
 * Pages of a streamed round (wire v2): every chunk the dump fills goes onto
 * the connection as one PAGE_CHUNK frame, straight from the chunk buffer it
 * was read into with process_vm_readv, together with the runs it holds, so
 * that the receiver can write the pages into its process as they arrive,
 * and append the same stored bytes to the image's pages file.
 *
 * PAGE_CHUNK payload, little-endian:
 *
 *   u32 chunk index | u32 raw length | u8 codec (0 none, 1 lz4) | 3 x u8 0
 *   | u32 run count | runs: u64 start, u32 pages, u32 byte offset in the chunk
 *   | the chunk as stored in a pages file
 */
import type { Socket } from 'node:net';
import { compress as lz4Compress, uncompressSync as lz4Uncompress } from 'lz4-napi';
import { crc32 } from '../image/checksum.js';
import { encodeFrame, Msg, MAX_FRAME, connectionError } from './wire.js';
import { TsnapError } from '../errors.js';
import { PageWhere, type ChunkEntry, type Compression, type PageRun } from '../../formats/schema.js';
import type { PageSink } from '../dump/page-sink.js';
import { PAGE_SIZE } from '../sys/uapi.js';

const PAGE = PAGE_SIZE;
const HEAD = 16;
const RUN = 16;
/** The largest raw chunk a receiver takes: the frame must hold it, stored uncompressed. */
export const MAX_STREAM_CHUNK = 2 << 20;

export interface ChunkRun {
  start: number;
  pages: number;
  /** Byte offset of the run's first page in the chunk's raw data. */
  offset: number;
}

export interface DecodedChunk {
  index: number;
  rawLength: number;
  codec: Compression;
  runs: ChunkRun[];
  /** As stored in a pages file. */
  stored: Buffer;
}

export function encodeChunkHead(index: number, rawLength: number, codec: Compression, runs: readonly PageRun[]): Buffer {
  const h = Buffer.alloc(HEAD + runs.length * RUN);
  h.writeUInt32LE(index, 0);
  h.writeUInt32LE(rawLength, 4);
  h.writeUInt8(codec === 'lz4' ? 1 : 0, 8);
  h.writeUInt32LE(runs.length, 12);
  runs.forEach((r, i) => {
    const o = HEAD + i * RUN;
    h.writeUInt32LE(r.start % 0x100000000, o);
    h.writeUInt32LE(Math.floor(r.start / 0x100000000), o + 4);
    h.writeUInt32LE(r.pages, o + 8);
    h.writeUInt32LE(r.offset, o + 12);
  });
  return h;
}

/** Decodes and checks a PAGE_CHUNK payload: every run page-aligned and inside the chunk. */
export function decodeChunk(payload: Buffer): DecodedChunk {
  const bad = (why: string) => new TsnapError('badImage', `migration stream: bad PAGE_CHUNK message: ${why}; the peer is not a compatible tsnap, or the stream is corrupted`);
  if (payload.length < HEAD) throw bad('too short');
  const index = payload.readUInt32LE(0);
  const rawLength = payload.readUInt32LE(4);
  const c = payload.readUInt8(8);
  const n = payload.readUInt32LE(12);
  if (c > 1) throw bad(`unknown codec ${c}`);
  if (rawLength === 0 || rawLength % PAGE !== 0 || rawLength > MAX_STREAM_CHUNK) throw bad(`raw length ${rawLength}`);
  if (HEAD + n * RUN > payload.length) throw bad(`${n} runs do not fit`);
  const runs: ChunkRun[] = [];
  let covered = 0;
  for (let i = 0; i < n; i++) {
    const o = HEAD + i * RUN;
    const start = payload.readUInt32LE(o) + payload.readUInt32LE(o + 4) * 0x100000000;
    const pages = payload.readUInt32LE(o + 8);
    const offset = payload.readUInt32LE(o + 12);
    if (start % PAGE !== 0 || start + pages * PAGE > 2 ** 47 || pages === 0) throw bad(`run at 0x${start.toString(16)}`);
    if (offset % PAGE !== 0 || offset < covered || offset + pages * PAGE > rawLength) throw bad(`run at 0x${start.toString(16)} lies outside its chunk`);
    covered = offset + pages * PAGE;
    runs.push({ start, pages, offset });
  }
  const stored = payload.subarray(HEAD + n * RUN);
  const codec: Compression = c === 1 ? 'lz4' : 'none';
  if (codec === 'none' && stored.length !== rawLength) throw bad(`${stored.length} bytes stored for ${rawLength}`);
  if (codec === 'lz4' && (stored.length < 4 || stored.readUInt32LE(0) !== rawLength)) throw bad('lz4 length prefix');
  return { index, rawLength, codec, runs, stored };
}

/** The raw page data of a decoded chunk. */
export function chunkData(c: DecodedChunk): Buffer {
  if (c.codec === 'none') return c.stored;
  let out: Buffer;
  try {
    out = lz4Uncompress(c.stored);
  } catch {
    throw new TsnapError('badImage', `migration stream: chunk ${c.index} does not decompress`);
  }
  if (out.length !== c.rawLength) throw new TsnapError('badImage', `migration stream: chunk ${c.index} decompresses to ${out.length} bytes, not ${c.rawLength}`);
  return out;
}

/**
 * A PageSink that writes each chunk onto the connection. Chunks leave in
 * the order they were filled, so the receiver's pages file has them in that
 * order: fileOffset is assigned as each is sent. A chunk buffer returns to
 * the pool only once the socket has flushed it (the socket holds it, not a
 * copy), and a full pool stops the copy loop: the network's pace.
 */
export class StreamPageSink implements PageSink {
  readonly chunks: ChunkEntry[] = [];
  bytesRaw = 0;
  bytesStored = 0;
  private readonly free: Buffer[] = [];
  private waiters: (() => void)[] = [];
  private tail: Promise<void> = Promise.resolve();
  private failure: unknown = null;
  private nextOffset = 0;
  private readonly t0 = Date.now();

  /** `limit`: bytes per second on the wire, 0 for none. `onSent`: bytes put on the wire. */
  constructor(private readonly sock: Socket, readonly compression: Compression, readonly chunkSize: number, private readonly limit = 0, private readonly onSent: (n: number) => void = () => {}) {
    if (chunkSize > MAX_STREAM_CHUNK || HEAD + chunkSize + (chunkSize >> 7) + 64 + 1024 * RUN > MAX_FRAME) throw new TsnapError('usage', `a streamed migration takes chunks of at most ${MAX_STREAM_CHUNK} bytes`);
    const pool = Math.max(4, Math.ceil((16 << 20) / chunkSize));
    for (let i = 0; i < pool; i++) {
      const b = Buffer.allocUnsafeSlow(chunkSize);
      b.fill(0); // touched now, not in the frozen window
      this.free.push(b);
    }
  }

  async acquire(): Promise<Buffer> {
    while (this.free.length === 0) {
      this.throwIfFailed();
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
    this.throwIfFailed();
    return this.free.pop()!;
  }

  submit(buf: Buffer, rawLength: number, runs: readonly PageRun[] = []): number {
    this.throwIfFailed();
    const index = this.chunks.length;
    const entry: ChunkEntry = { fileOffset: 0, storedLength: 0, rawLength, codec: 'none', crc32: 0 };
    this.chunks.push(entry);
    this.bytesRaw += rawLength;
    const raw = buf.subarray(0, rawLength);
    // Started now, so compression of this chunk overlaps the sending of the previous ones.
    const stored = this.compression === 'lz4' ? lz4Compress(raw).then((c) => (c.length < rawLength ? c : raw)) : Promise.resolve(raw);
    stored.catch(() => {});
    const here = runs.filter((r) => r.where === PageWhere.Here);
    let released = false;
    this.tail = this.tail.then(async () => {
      if (this.failure) throw this.failure;
      const s = await stored;
      entry.codec = s === raw ? 'none' : 'lz4';
      entry.crc32 = crc32(s);
      entry.storedLength = s.length;
      entry.fileOffset = this.nextOffset;
      this.nextOffset += s.length;
      this.bytesStored += s.length;
      // One copy behind the run table: the chunk buffer is free again at
      // once, and the socket owns what it still has to send.
      const payload = Buffer.concat([encodeChunkHead(index, rawLength, entry.codec, here), s]);
      released = true;
      this.release(buf);
      await this.write(encodeFrame(Msg.PageChunk, payload));
      this.onSent(s.length);
      if (this.limit > 0) {
        const ahead = this.nextOffset / this.limit * 1000 - (Date.now() - this.t0);
        if (ahead > 0) await new Promise((r) => setTimeout(r, ahead));
      }
    }).catch((err) => { this.failure ??= err; if (!released) this.release(buf); });
    return index;
  }

  /** Writes one frame, waiting while the socket's buffer is full. */
  private async write(parts: Buffer[]): Promise<void> {
    const { sock } = this;
    if (sock.destroyed || !sock.writable) throw new TsnapError('targetFailed', 'migration peer closed the connection');
    sock.write(parts[0]);
    sock.write(parts[1], (err) => { if (err) this.failure ??= connectionError(err); });
    if (sock.writableNeedDrain) {
      await new Promise<void>((resolve, reject) => {
        const onDrain = () => { sock.off('close', onClose); resolve(); };
        const onClose = () => { sock.off('drain', onDrain); reject(new TsnapError('targetFailed', 'migration peer closed the connection')); };
        sock.once('drain', onDrain);
        sock.once('close', onClose);
      });
    }
  }

  async finish(): Promise<number> {
    await this.tail;
    this.throwIfFailed();
    return this.nextOffset;
  }

  async abort(): Promise<void> {
    this.failure ??= new Error('aborted');
    await this.tail.catch(() => {});
  }

  private release(buf: Buffer): void {
    this.free.push(buf);
    const w = this.waiters;
    this.waiters = [];
    for (const resolve of w) resolve();
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }
}

/**
 * The receiver's copy of a streamed round's pages file: the stored chunks
 * of PAGE_CHUNK frames appended in arrival order, behind the usual header,
 * so that the chain on the receiver's disk is a normal image chain. Writes
 * run in the background: the live build does not wait for the disk, and a
 * round's file is finished (header, fsync) only when the commit needs it.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { encodeHeader } from '../image/header.js';
import { fsyncDir } from '../image/image-dir.js';
import { crc32 } from '../image/checksum.js';
import { withPath, TsnapError } from '../errors.js';
import { FORMAT_VERSION, HEADER_SIZE, FileKind, PageWhere, type ChunkEntry, type PageRun } from '../../formats/schema.js';
import type { ChunkRun, DecodedChunk } from './page-stream.js';

export class ReceivedPagesFile {
  readonly chunks: ChunkEntry[] = [];
  /**
   * The runs each chunk's PAGE_CHUNK said it holds: what the live build
   * wrote into the process. They must be the index's runs, or the process
   * would differ from the image kept on disk.
   */
  private readonly runsOf: ChunkRun[][] = [];
  private offset = 0;
  private tail: Promise<void>;
  private failure: unknown = null;
  private fh: FileHandle | null = null;
  private queued = 0;

  constructor(readonly path: string) {
    this.tail = open(path, 'wx', 0o600).then(async (fh) => {
      this.fh = fh;
      await fh.write(Buffer.alloc(HEADER_SIZE), 0, HEADER_SIZE, 0);
    }).catch((err) => { this.failure ??= withPath(err, path); });
  }

  /** Queues a chunk; an earlier write's failure (a full disk) is thrown here. */
  append(c: DecodedChunk): void {
    this.throwIfFailed();
    if (c.index !== this.chunks.length) throw new TsnapError('badImage', `migration stream: chunk ${c.index} arrived where chunk ${this.chunks.length} was due`);
    const stored = c.stored;
    this.chunks.push({ fileOffset: this.offset, storedLength: stored.length, rawLength: c.rawLength, codec: c.codec, crc32: crc32(stored) });
    this.runsOf.push(c.runs);
    const at = HEADER_SIZE + this.offset;
    this.offset += stored.length;
    this.queued += stored.length;
    this.tail = this.tail.then(async () => {
      if (this.failure || !this.fh) return;
      let done = 0;
      while (done < stored.length) {
        const { bytesWritten } = await this.fh.write(stored, done, stored.length - done, at + done);
        if (bytesWritten === 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
        done += bytesWritten;
      }
      this.queued -= stored.length;
    }).catch((err) => { this.failure ??= withPath(err, this.path); });
  }

  /** Waits while more than `limit` bytes wait for the disk: a slow disk slows the sender, not memory. */
  async backpressure(limit = 64 << 20): Promise<void> {
    if (this.queued > limit) await this.tail;
    this.throwIfFailed();
  }

  /**
   * Checks the sender's index (chunk table and runs, from the round's
   * pagemap) against what arrived, in memory: at ITER_END, before the round
   * counts, so that a process built from these chunks is never committed
   * while the image kept for it says otherwise.
   */
  check(sent: readonly ChunkEntry[], sentRuns: readonly PageRun[]): void {
    const differs = sent.length !== this.chunks.length || sent.some((s, i) => {
      const c = this.chunks[i];
      return s.fileOffset !== c.fileOffset || s.storedLength !== c.storedLength || s.rawLength !== c.rawLength || s.codec !== c.codec || s.crc32 !== c.crc32;
    });
    if (differs) {
      const i = sent.findIndex((s, k) => JSON.stringify(s) !== JSON.stringify(this.chunks[k]));
      const at = i < 0 ? '' : `; chunk ${i} arrived as ${JSON.stringify(this.chunks[i] ?? null)}, the index lists ${JSON.stringify(sent[i])}`;
      throw new TsnapError('badImage', `migration stream: the chunks received for ${this.path} (${this.chunks.length}) are not the ones its index lists (${sent.length})${at}`);
    }
    const runDiffers = runMismatch(this.runsOf, sentRuns);
    if (runDiffers) throw new TsnapError('badImage', `migration stream: ${this.path}: ${runDiffers}; the peer is not a compatible tsnap, or the stream is corrupted`);
  }

  /** Every chunk written and the header (check() has passed). */
  async complete(): Promise<void> {
    this.tail = this.tail.then(async () => {
      if (this.failure || !this.fh) return;
      await this.fh.write(encodeHeader({ version: FORMAT_VERSION, kind: FileKind.Pages, flags: 0, payloadLength: this.offset, payloadCrc: 0 }), 0, HEADER_SIZE, 0);
    }).catch((err) => { this.failure ??= withPath(err, this.path); });
    await this.tail;
    this.throwIfFailed();
  }

  /** On disk for good (fsync of the file and its directory), then closed. */
  async sync(): Promise<void> {
    try {
      await this.fh?.sync();
      fsyncDir(dirname(this.path));
    } catch (err) {
      this.failure ??= withPath(err, this.path);
    }
    await this.close();
    this.throwIfFailed();
  }

  async abort(): Promise<void> {
    this.failure ??= new Error('aborted');
    await this.tail;
    await this.close();
  }

  private async close(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    await fh?.close().catch(() => {});
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }
}

/**
 * Where the runs the chunks carried differ from the index's runs stored
 * in this file (in order, chunk by chunk), or null when they are the same.
 */
export function runMismatch(received: readonly (readonly ChunkRun[])[], indexed: readonly PageRun[]): string | null {
  const hex = (n: number) => `0x${n.toString(16)}`;
  const listed: PageRun[][] = received.map(() => []);
  for (const r of indexed) {
    if (r.where !== PageWhere.Here) continue;
    if (!Number.isInteger(r.chunk) || r.chunk < 0 || r.chunk >= listed.length) return `the index lists ${r.pages} page(s) at ${hex(r.start)} in chunk ${r.chunk}, which did not arrive`;
    listed[r.chunk].push(r);
  }
  for (let c = 0; c < received.length; c++) {
    const got = received[c];
    const want = listed[c];
    for (let k = 0; k < Math.max(got.length, want.length); k++) {
      const g = got[k];
      const w = want[k];
      if (g && w && g.start === w.start && g.pages === w.pages && g.offset === w.offset) continue;
      const said = g ? `${g.pages} page(s) at ${hex(g.start)} (offset ${g.offset})` : 'no more runs';
      const lists = w ? `${w.pages} page(s) at ${hex(w.start)} (offset ${w.offset})` : 'no more';
      return `chunk ${c} carried ${said} where the index lists ${lists}`;
    }
  }
  return null;
}

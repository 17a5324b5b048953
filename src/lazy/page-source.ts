/**
 * Where a lazy restore's pages come from. The pager (pager.ts) asks a
 * PageSource for page data by the address the page had in the dumped
 * process, and never knows whether that is a local image chain (here) or,
 * for post-copy, the migration connection to the source host.
 */
import { PageFileReader } from '../image/page-file.js';
import { resolveChain, type ResolvedRun } from '../image/chain-index.js';
import type { Range } from '../image/ranges.js';
import type { PageRun, ChunkEntry } from '../../formats/schema.js';
import { PAGE_SIZE } from '../sys/uapi.js';

const P = PAGE_SIZE;

export interface Extent {
  start: number;
  len: number;
}

export interface PageSource {
  /**
   * The addresses this source holds data for, sorted: the pager fills
   * exactly these and answers every other fault with the zero page.
   */
  extents(): Extent[];
  /** The bytes of [start, start+len), or null when they are all zero. Rejects when the data cannot be had. */
  fetch(start: number, len: number): Promise<Buffer | null>;
  /**
   * fetch() on the calling thread, for a source that can (a local file):
   * a fault is then answered without waiting for the pool's threads and
   * the event loop's turns (2-3 each per chunk), which on a busy machine
   * cost more than reading and decoding the chunk. Throws as fetch() rejects.
   */
  fetchNow?(start: number, len: number): Buffer | null;
  close(): void;
}

/** One image of a chain, as much as reading its pages needs (plain data: it crosses to a worker or a pager process). */
export interface ChainLevelSpec {
  dir: string;
  kind: 'full' | 'delta';
  runs: PageRun[];
  chunks: ChunkEntry[];
}

/** Decoded chunks kept: faults near each other hit the same chunk. */
const CACHE_CHUNKS = 8;

/** Whether run `r` holds all of [start, start+len): its chunk's data is then the answer itself, no copy. */
function whole(r: ResolvedRun, data: Buffer, start: number, len: number): Buffer | null {
  if (r.start > start || r.start + r.pages * P < start + len) return null;
  const from = r.offset + (start - r.start);
  return data.subarray(from, from + len);
}

/** Copies run `r`'s part of [start, start+out.length) from its chunk's `data` into `out`. */
function copyRun(r: ResolvedRun, data: Buffer, start: number, out: Buffer): void {
  const s = Math.max(start, r.start);
  const e = Math.min(start + out.length, r.start + r.pages * P);
  data.copy(out, s - start, r.offset + (s - r.start), r.offset + (e - r.start));
}

/** Pages of a (local) image chain, each from the newest image that has it. */
export class ChainPageSource implements PageSource {
  private readonly runs: ResolvedRun[];
  private readonly readers: (PageFileReader | null)[];
  private readonly cache = new Map<string, Promise<Buffer>>();

  constructor(private readonly chain: readonly ChainLevelSpec[], within: readonly Range[]) {
    this.runs = resolveChain(chain, within);
    this.readers = chain.map(() => null);
  }

  extents(): Extent[] {
    return this.runs.map((r) => ({ start: r.start, len: r.pages * P }));
  }

  /** Chunks of the cache whose read ended, for fetchNow(). */
  private readonly ready = new Map<string, Buffer>();

  private reader(image: number): PageFileReader {
    return (this.readers[image] ??= new PageFileReader(this.chain[image].dir, this.chain[image].chunks));
  }

  private remember(key: string, got: Promise<Buffer>): void {
    this.cache.set(key, got);
    while (this.cache.size > CACHE_CHUNKS) {
      const old = this.cache.keys().next().value!;
      this.cache.delete(old);
      this.ready.delete(old);
    }
  }

  private chunk(image: number, chunk: number): Promise<Buffer> {
    const key = `${image}:${chunk}`;
    let got = this.cache.get(key);
    if (got) {
      this.cache.delete(key);
      this.cache.set(key, got);
      return got;
    }
    got = this.reader(image).readChunkAsync(chunk);
    // A failed read is not cached: the pager reports it, and may be asked again.
    got.then((b) => { if (this.cache.get(key) === got) this.ready.set(key, b); }, () => { this.cache.delete(key); this.ready.delete(key); });
    this.remember(key, got);
    return got;
  }

  /** chunk() on this thread: a read still in flight is not waited for but done again. */
  private chunkNow(image: number, chunk: number): Buffer {
    const key = `${image}:${chunk}`;
    const have = this.ready.get(key);
    if (have && this.cache.has(key)) {
      const got = this.cache.get(key)!;
      this.cache.delete(key);
      this.cache.set(key, got);
      return have;
    }
    const b = this.reader(image).readChunk(chunk);
    this.cache.delete(key);
    this.remember(key, Promise.resolve(b));
    this.ready.set(key, b);
    return b;
  }

  /** Index of the first run ending after `addr`. */
  private firstRun(addr: number): number {
    let lo = 0;
    let hi = this.runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const r = this.runs[mid];
      if (r.start + r.pages * P <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  async fetch(start: number, len: number): Promise<Buffer | null> {
    const end = start + len;
    let out: Buffer | null = null;
    for (let i = this.firstRun(start); i < this.runs.length && this.runs[i].start < end; i++) {
      const r = this.runs[i];
      const data = await this.chunk(r.image, r.chunk);
      const all = whole(r, data, start, len);
      if (all) return all;
      copyRun(r, data, start, (out ??= Buffer.alloc(len)));
    }
    return out;
  }

  fetchNow(start: number, len: number): Buffer | null {
    const end = start + len;
    let out: Buffer | null = null;
    for (let i = this.firstRun(start); i < this.runs.length && this.runs[i].start < end; i++) {
      const r = this.runs[i];
      const data = this.chunkNow(r.image, r.chunk);
      const all = whole(r, data, start, len);
      if (all) return all;
      copyRun(r, data, start, (out ??= Buffer.alloc(len)));
    }
    return out;
  }

  close(): void {
    for (const r of this.readers) r?.close();
    this.readers.fill(null);
    this.cache.clear();
  }
}

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

  private chunk(image: number, chunk: number): Promise<Buffer> {
    const key = `${image}:${chunk}`;
    let got = this.cache.get(key);
    if (got) {
      this.cache.delete(key);
      this.cache.set(key, got);
      return got;
    }
    const reader = (this.readers[image] ??= new PageFileReader(this.chain[image].dir, this.chain[image].chunks));
    got = reader.readChunkAsync(chunk);
    // A failed read is not cached: the pager reports it, and may be asked again.
    got.catch(() => this.cache.delete(key));
    this.cache.set(key, got);
    while (this.cache.size > CACHE_CHUNKS) this.cache.delete(this.cache.keys().next().value!);
    return got;
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
      const s = Math.max(start, r.start);
      const e = Math.min(end, r.start + r.pages * P);
      const data = await this.chunk(r.image, r.chunk);
      const from = r.offset + (s - r.start);
      // One run covering the whole request (the usual case): no copy.
      if (s === start && e === end) return data.subarray(from, from + len);
      out ??= Buffer.alloc(len);
      data.copy(out, s - start, from, from + (e - s));
    }
    return out;
  }

  close(): void {
    for (const r of this.readers) r?.close();
    this.readers.fill(null);
    this.cache.clear();
  }
}

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
  /**
   * The caller is done with what fetch() or fetchNow() returned: its memory
   * may hold another chunk from now on. Optional on both sides: data never
   * released is left to the garbage collector.
   */
  release?(data: Buffer): void;
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
/** Chunk buffers kept for reuse beyond those the cache holds. */
const SPARE_BUFFERS = 4;

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

/**
 * Chunk buffers used again. A fill reads every chunk once: with a fresh
 * 1 MiB buffer each, 1 GiB of fill was 1 GiB of external memory for V8,
 * whose pressure started ~40 full garbage collections (8-10 ms each here);
 * and each full collection ages the bytecode of code not run meanwhile, so
 * that after one fill the restore's own functions were flushed and compiled
 * again on the next restore of the same tsnap (bench/lazy.ts: the main
 * thread's CPU to running 9 -> 25-30 ms). A buffer goes back to the spares
 * only once it left the cache and every fetch that handed out a view of it
 * was released (release()); a view never released keeps its buffer out of
 * the spares for good, which is always safe.
 */
class ChunkBuffers {
  private readonly spare: Buffer[] = [];
  /** Views handed out and not released, per pooled buffer. */
  private readonly leases = new Map<ArrayBufferLike, number>();
  /** Pooled buffers out of the cache, waiting for their last lease. */
  private readonly evicted = new Set<ArrayBufferLike>();
  private readonly pooled = new WeakMap<ArrayBufferLike, Buffer>();

  constructor(private readonly size: number) {}

  take(): Buffer {
    const b = this.spare.pop() ?? Buffer.allocUnsafeSlow(this.size);
    this.pooled.set(b.buffer, b);
    return b;
  }

  /** `data` (a view of a pooled buffer or not) is handed out. */
  lease(data: Buffer): void {
    if (this.pooled.has(data.buffer)) this.leases.set(data.buffer, (this.leases.get(data.buffer) ?? 0) + 1);
  }

  release(data: Buffer): void {
    const n = this.leases.get(data.buffer);
    if (n === undefined) return;
    if (n > 1) { this.leases.set(data.buffer, n - 1); return; }
    this.leases.delete(data.buffer);
    if (this.evicted.delete(data.buffer)) this.give(data.buffer);
  }

  /** The cache no longer holds the chunk in `data` (settled): its buffer is free once unleased. */
  drop(data: Buffer): void {
    if (!this.pooled.has(data.buffer)) return;
    if (this.leases.has(data.buffer)) this.evicted.add(data.buffer);
    else this.give(data.buffer);
  }

  private give(ab: ArrayBufferLike): void {
    const b = this.pooled.get(ab)!;
    if (this.spare.length < SPARE_BUFFERS) this.spare.push(b);
  }

  clear(): void {
    this.spare.length = 0;
  }
}

/** Pages of a (local) image chain, each from the newest image that has it. */
export class ChainPageSource implements PageSource {
  private readonly runs: ResolvedRun[];
  private readonly readers: (PageFileReader | null)[];
  private readonly cache = new Map<string, Promise<Buffer>>();
  /** TSNAP_LAZY_FRESH_BUFFERS=1: a fresh buffer per chunk read, as before (bench's baseline in the same run). */
  private readonly buffers: ChunkBuffers | null;

  constructor(private readonly chain: readonly ChainLevelSpec[], within: readonly Range[]) {
    this.runs = resolveChain(chain, within);
    this.readers = chain.map(() => null);
    let largest = 0;
    for (const level of chain) for (const c of level.chunks) largest = Math.max(largest, c.storedLength);
    this.buffers = process.env.TSNAP_LAZY_FRESH_BUFFERS === '1' || largest === 0 ? null : new ChunkBuffers(largest);
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
      const p = this.cache.get(old)!;
      this.cache.delete(old);
      this.ready.delete(old);
      // A read still in flight writes into its buffer: dropped once it ended.
      const buffers = this.buffers;
      if (buffers) p.then((b) => buffers.drop(b), () => { /* its buffer is left to the GC */ });
    }
  }

  /** A chunk's buffer to read into (a spare one when there is), or none. */
  private into(): Buffer | undefined {
    return this.buffers?.take();
  }

  /** What a read into `into` gave: when it is another buffer (a decoded lz4 chunk), `into` is free again. */
  private settle(into: Buffer | undefined, got: Buffer): Buffer {
    if (into && got.buffer !== into.buffer) this.buffers!.drop(into);
    return got;
  }

  release(data: Buffer): void {
    this.buffers?.release(data);
  }

  private chunk(image: number, chunk: number): Promise<Buffer> {
    const key = `${image}:${chunk}`;
    let got = this.cache.get(key);
    if (got) {
      this.cache.delete(key);
      this.cache.set(key, got);
      return got;
    }
    const into = this.into();
    got = this.reader(image).readChunkAsync(chunk, into).then((b) => this.settle(into, b));
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
    const into = this.into();
    const b = this.settle(into, this.reader(image).readChunk(chunk, into));
    const stale = this.cache.get(key);
    this.cache.delete(key);
    // The same chunk read again while a read of it was in flight: that one's buffer is dropped when it ends.
    if (stale && this.buffers) { const buffers = this.buffers; stale.then((x) => buffers.drop(x), () => { /* left to the GC */ }); }
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
      if (all) { this.buffers?.lease(all); return all; }
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
      if (all) { this.buffers?.lease(all); return all; }
      copyRun(r, data, start, (out ??= Buffer.alloc(len)));
    }
    return out;
  }

  close(): void {
    for (const r of this.readers) r?.close();
    this.readers.fill(null);
    this.cache.clear();
    this.buffers?.clear();
  }
}

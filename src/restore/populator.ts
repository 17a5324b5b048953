/**
 * The new task's memory allocated ahead of the page writer: the task
 * populates 16 MiB slices of what is about to be written, on its own CPU,
 * through remote madvise calls, while tsnap writes the slices before them
 * (page-filler.ts, map-fill.ts).
 */
import type { ResolvedRun, ResolvedTable } from '../image/chain-index.js';
import { SYS, PAGE_SIZE } from '../sys/uapi.js';
import type { RemoteSyscaller } from '../inject/remote-syscall.js';

const MADV_POPULATE_WRITE = 23;
/** Runs shorter than this are left to fault in during the write. */
const POPULATE_MIN = 64 << 10;
/** One populate call covers at most this much, so the writer can follow closely. */
const POPULATE_SLICE = 16 << 20;

/**
 * Fresh memory costs most of a restore: every page is allocated and zeroed
 * on first write. The new task does that itself, on its own CPU, through
 * MADV_POPULATE_WRITE syscalls started ahead of the writer, while tsnap
 * reads, checks and writes the chunks before them.
 */
export interface PopulateRange { addr: number; len: number; lastChunkPos: number }

/**
 * Chunk order: merged by address across the images of a chain, so that a
 * base image's runs that newer pages cut into short pieces are one range
 * again, as in a single image; started in the order the writer first needs
 * them.
 */
export function populateByChunk(runsInOrder: { run: ResolvedRun; pos: number }[]): PopulateRange[] {
  const byAddr = [...runsInOrder].sort((a, b) => a.run.start - b.run.start);
  const merged: { addr: number; len: number; firstChunkPos: number; lastChunkPos: number }[] = [];
  for (const { run, pos } of byAddr) {
    const len = run.pages * PAGE_SIZE;
    const last = merged[merged.length - 1];
    if (last && last.addr + last.len === run.start && last.len < POPULATE_SLICE) {
      last.len += len;
      last.firstChunkPos = Math.min(last.firstChunkPos, pos);
      last.lastChunkPos = Math.max(last.lastChunkPos, pos);
    } else {
      merged.push({ addr: run.start, len, firstChunkPos: pos, lastChunkPos: pos });
    }
  }
  return merged.filter((m) => m.len >= POPULATE_MIN).sort((a, b) => a.firstChunkPos - b.firstChunkPos || a.addr - b.addr);
}

/** Address order (the writer's windows follow the addresses): one pass, already in the order needed. */
export function populateByAddress(resolved: ResolvedTable, windowOf: Int32Array): PopulateRange[] {
  const out: PopulateRange[] = [];
  let cur: PopulateRange | null = null;
  const { start, pages } = resolved;
  for (let i = 0; i < resolved.length; i++) {
    const len = pages[i] * PAGE_SIZE;
    if (cur && cur.addr + cur.len === start[i] && cur.len < POPULATE_SLICE) {
      cur.len += len;
      cur.lastChunkPos = windowOf[i];
    } else {
      if (cur && cur.len >= POPULATE_MIN) out.push(cur);
      cur = { addr: start[i], len, lastChunkPos: windowOf[i] };
    }
  }
  if (cur && cur.len >= POPULATE_MIN) out.push(cur);
  return out;
}

export class Populator {
  private next = 0;
  private done = 0;
  private broken = false;

  /** `queue`: the ranges to populate, in the order the writer first needs them, each with the last position it is needed at. */
  private readonly sc: RemoteSyscaller | null;

  constructor(sc: RemoteSyscaller | null, private readonly queue: PopulateRange[]) {
    // TSNAP_FILL_POPULATE=0: the writes fault the pages in instead (bench A/B in one build).
    this.sc = process.env.TSNAP_FILL_POPULATE === '0' ? null : sc;
  }

  private start(): void {
    if (this.broken || this.next >= this.queue.length) return;
    const q = this.queue[this.next++];
    this.sc!.begin(SYS.madvise, q.addr, q.len, MADV_POPULATE_WRITE);
  }

  private finish(r: bigint): void {
    this.done++;
    if (r < 0n) this.broken = true; // an old kernel: the writes fault pages in instead
    this.start();
  }

  /** Kicks the first populate off. */
  begin(): void {
    if (this.sc) this.start();
  }

  /** Before writing the chunk at position `pos`: everything it needs is populated. */
  ready(pos: number): void {
    if (!this.sc) return;
    // Collect finished populates without waiting, so the task never idles.
    while (this.done < this.next) {
      const r = this.sc.poll();
      if (r === null) break;
      this.finish(r);
    }
    while (this.done < this.next && this.queue[this.done].lastChunkPos <= pos) this.finish(this.sc.end());
  }

  /** Waits for a populate still running (the task must be stopped again). */
  drain(): void {
    if (!this.sc) return;
    this.broken = true;
    while (this.done < this.next) { this.sc.end(); this.done++; }
  }
}

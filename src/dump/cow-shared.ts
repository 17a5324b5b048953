import { PAGE_SIZE } from '../sys/uapi.js';
/**
 * What the copy-on-write dump's two threads share (cow-session.ts on the
 * main thread, tsnap-cow.c's thread serving faults): plain shared memory,
 * so that either side sees the other's progress at once, whatever the main
 * thread's event loop is doing. The C side names the same indices: keep
 * CTL and TIMES in step with its enums.
 *
 * Pages of the protected ranges are numbered 0..n-1 in address order (the
 * "index space"). slots[i] is 0 until the fault server saved page i, then
 * 1 + its slot in the store. The main thread copies in address order and
 * publishes in ctl[CURSOR] the index below which it has taken every page:
 * a fault there needs no copy, only a wake-up. Once it has taken a saved
 * page, the main thread hands its slot back through a ring (one producer,
 * one consumer), so the store bounds the pages saved ahead of the copy, not
 * all pages ever saved.
 */
export const PAGE = PAGE_SIZE;

export const CTL = {
  /** Set by the main thread (with a byte on the wake pipe): drain and exit. */
  STOP: 0,
  /** Pages of the store handed out so far (the worker is the only allocator). */
  NEXT_SLOT: 1,
  /** 1 once memory not yet copied left under the copy (unmapped, dropped, moved). */
  LOST: 2,
  FAULTS: 3,
  FAULT_PAGES: 4,
  /** Faults left waiting for the sequential copy because the store was full. */
  DEFERRED: 5,
  CURSOR: 6,
  /** Set by the main thread once the worker's configuration is posted. */
  GO: 7,
  /** Set by the worker when it serves faults (after GO), and to 2 when it has exited its loop. */
  STATE: 8,
  /** The first kind of loss seen (an UFFD_EVENT_* code, 1 for an unreadable range). */
  LOST_EVENT: 9,
  /** Free-slot ring: the main thread returns slots it has taken pages from (head), the worker reuses them (tail). */
  FREE_HEAD: 10,
  FREE_TAIL: 11,
  /** Set by the worker once it protected its share (1), or to the errno it met. */
  PROTECTED: 12,
  /**
   * The early phase (cow-prearm.ts: memory protected before the freeze):
   * 1 while the worker serves it and waits in poll(), 4 while it drains the
   * uffd (unprotecting), 2 once the main thread, frozen, ended it (only
   * from 1: from then on nothing unprotects behind the frozen scan).
   */
  EARLY: 13,
  /** Faults the early phase served (each unprotects one page, protected again while frozen). */
  EARLY_FAULTS: 14,
  /** The errno the server stopped on (0 while it serves): its faults then wait for the copy. */
  FAILED: 15,
  SIZE: 16,
} as const;

/** Float64 fields of the timing array. */
export const TIMES = {
  /** Sum of the time from reading a fault to waking its writer (ns). */
  SERVICE_NS: 0,
  MAX_SERVICE_NS: 1,
  LOST_AT: 2,
  SIZE: 3,
} as const;

/** A protected range of pages and the index of its first page. */
export interface IndexedRange {
  start: number;
  end: number;
  first: number;
}

/** Ranges (sorted, disjoint) numbered page by page. */
export function indexRanges(ranges: readonly { start: number; end: number }[]): IndexedRange[] {
  const out: IndexedRange[] = [];
  let first = 0;
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last && last.end === r.start) { last.end = r.end; } else out.push({ start: r.start, end: r.end, first });
    first += (r.end - r.start) / PAGE;
  }
  return out;
}

export function indexedPages(ranges: readonly IndexedRange[]): number {
  const l = ranges[ranges.length - 1];
  return l ? l.first + (l.end - l.start) / PAGE : 0;
}

/** The range holding addr (binary search), or -1. */
export function rangeOf(ranges: readonly IndexedRange[], addr: number): number {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = ranges[mid];
    if (addr < r.start) hi = mid - 1;
    else if (addr >= r.end) lo = mid + 1;
    else return mid;
  }
  return -1;
}

export function pageIndex(ranges: readonly IndexedRange[], addr: number): number {
  const i = rangeOf(ranges, addr);
  return i < 0 ? -1 : ranges[i].first + Math.floor((addr - ranges[i].start) / PAGE);
}

export const HUGE_PAGE = 2 << 20;

/** Early faults the main thread can read back between two of its protection passes. */
export const EARLY_LOG_PAGES = 1 << 16;

/** Given to the fault server once the ranges are protected. */
export interface CowConfig {
  pid: number;
  uffd: number;
  wakeFd: number;
  ranges: IndexedRange[];
  slots: SharedArrayBuffer;
  store: SharedArrayBuffer;
  /** Int32 ring of store slots free again, as long as the store has pages. */
  free: SharedArrayBuffer;
  /** Pages saved around a faulting one (an aligned block), to spare its neighbours a fault each. */
  blockPages: number;
  /** The worker's share of the protecting, done in parallel with the main thread's while frozen. */
  protect: { start: number; len: number }[];
}

/** Cuts ranges into two lists of (nearly) equal page counts, splitting one range if needed. */
export function halves(ranges: readonly { start: number; end: number }[]): [{ start: number; len: number }[], { start: number; len: number }[]] {
  const total = ranges.reduce((n, r) => n + (r.end - r.start), 0);
  const first: { start: number; len: number }[] = [];
  const second: { start: number; len: number }[] = [];
  let done = 0;
  for (const r of ranges) {
    const len = r.end - r.start;
    const room = Math.max(0, Math.floor((total / 2 - done) / PAGE) * PAGE);
    if (room >= len) first.push({ start: r.start, len });
    else if (room > 0) { first.push({ start: r.start, len: room }); second.push({ start: r.start + room, len: len - room }); }
    else second.push({ start: r.start, len });
    done += len;
  }
  return [first, second];
}

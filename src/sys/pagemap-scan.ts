/**
 * PAGEMAP_SCAN (6.7+) on /proc/PID/pagemap: asks the kernel for the page
 * ranges of an address range whose categories match, 24 bytes per range
 * instead of 8 bytes per page.
 *
 * The ioctl may stop early: when the output vector is full, or when
 * max_pages pages were reported. It then writes `walk_end`, and the next
 * call resumes there. A range cut by a full vector continues in the next
 * batch; `scanRanges` joins such pieces so callers see maximal ranges.
 *
 * walk_end is not always where the walk stopped. One ioctl walks in passes
 * of a bounded kernel buffer (512 regions), dropping the mmap lock between
 * them; a pass that ends early sets walk_end, and a later pass that then
 * completes the walk leaves it there (seen on 6.18: 2000 regions returned up
 * to the end of the range, walk_end 3 MiB before it). Resuming at such a
 * stale walk_end reports again what the call already returned: all of it
 * for a plain scan, and the pages written meanwhile for a WP_MATCHING scan
 * of a running process — the same page twice in one image. So the next call
 * starts at or after the end of everything already returned, and anything
 * below that is dropped.
 */
import { openSync, closeSync } from 'node:fs';
import { libc } from './libc.js';
import { SysError } from './errors.js';
import { PAGEMAP_SCAN, PM_SCAN, PM_SCAN_ARG_SIZE, PAGE_REGION_SIZE, PAGE_IS } from './uapi.js';
import { PAGE_SIZE } from './uapi.js';

export interface ScanQuery {
  start: number;
  end: number;
  flags?: number;
  categoryInverted?: number;
  categoryMask?: number;
  categoryAnyof?: number;
  returnMask: number;
  /** Stop after this many pages in total (0: no limit). */
  maxPages?: number;
}

export interface PageRegion {
  start: number;
  end: number;
  categories: number;
}

/** One ioctl call: fills `out` from `start`, returns the regions and walk_end. */
export type ScanCall = (q: ScanQuery, start: number, maxPages: number, out: PageRegion[], vecLen: number) => number;

/**
 * Drives repeated scan calls through walk_end until `end` or maxPages,
 * joining adjacent same-category regions split across calls.
 */
export function* scanRanges(call: ScanCall, q: ScanQuery, vecLen: number): Generator<PageRegion[]> {
  let start = q.start;
  let pagesLeft = q.maxPages ?? 0;
  let pending: PageRegion | null = null;
  // End of everything returned so far: nothing below it may come out twice.
  let frontier = q.start;
  while (start < q.end) {
    const out: PageRegion[] = [];
    const walkEnd = call(q, start, pagesLeft, out, vecLen);
    if (walkEnd > q.end) {
      throw new SysError(`PAGEMAP_SCAN(0x${start.toString(16)})`, 5, `walk_end 0x${walkEnd.toString(16)} lies past the end 0x${q.end.toString(16)}`);
    }
    const batch: PageRegion[] = [];
    for (const o of out) {
      if (o.end <= frontier) continue;
      const r = { start: Math.max(o.start, frontier), end: o.end, categories: o.categories };
      frontier = r.end;
      if (q.maxPages) pagesLeft -= (r.end - r.start) / PAGE_SIZE;
      if (pending && pending.end === r.start && pending.categories === r.categories) {
        pending.end = r.end;
        continue;
      }
      if (pending) batch.push(pending);
      pending = r;
    }
    if (batch.length) yield batch;
    if (q.maxPages && pagesLeft <= 0) break;
    const next = Math.max(walkEnd, frontier);
    if (next <= start) {
      throw new SysError(`PAGEMAP_SCAN(0x${start.toString(16)})`, 5, `walk_end 0x${walkEnd.toString(16)} makes no progress`);
    }
    start = next;
  }
  if (pending) yield [pending];
}

/** The pagemap file of one process, opened once and bound to its mm. */
export class Pagemap {
  readonly fd: number;
  private readonly arg = Buffer.alloc(PM_SCAN_ARG_SIZE);
  private vec: Buffer;
  constructor(readonly pid: number, readonly vecLen = 4096) {
    try {
      this.fd = openSync(`/proc/${pid}/pagemap`, 'r');
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new SysError(`open(/proc/${pid}/pagemap)`, Math.abs(e.errno ?? 5));
    }
    this.vec = Buffer.alloc(vecLen * PAGE_REGION_SIZE);
  }

  /** One raw ioctl. Exposed for tests of edge cases (tiny vec, max_pages). */
  readonly call: ScanCall = (q, start, maxPages, out, vecLen) => {
    if (vecLen * PAGE_REGION_SIZE > this.vec.length) this.vec = Buffer.alloc(vecLen * PAGE_REGION_SIZE);
    const a = this.arg;
    const set = (off: number, v: number | bigint) => a.writeBigUInt64LE(BigInt(v), off);
    set(PM_SCAN.size, PM_SCAN_ARG_SIZE);
    set(PM_SCAN.flags, q.flags ?? 0);
    set(PM_SCAN.start, start);
    set(PM_SCAN.end, q.end);
    set(PM_SCAN.walk_end, 0);
    set(PM_SCAN.vec, libc.address(this.vec));
    set(PM_SCAN.vec_len, vecLen);
    set(PM_SCAN.max_pages, maxPages);
    set(PM_SCAN.category_inverted, q.categoryInverted ?? 0);
    set(PM_SCAN.category_mask, q.categoryMask ?? 0);
    set(PM_SCAN.category_anyof_mask, q.categoryAnyof ?? 0);
    set(PM_SCAN.return_mask, q.returnMask);
    const n = libc.ioctl(this.fd, PAGEMAP_SCAN, a);
    if (n === -1) throw new SysError(`ioctl(/proc/${this.pid}/pagemap, PAGEMAP_SCAN)`, libc.errno());
    for (let i = 0; i < n; i++) {
      const o = i * PAGE_REGION_SIZE;
      out.push({
        start: Number(this.vec.readBigUInt64LE(o)),
        end: Number(this.vec.readBigUInt64LE(o + 8)),
        categories: Number(this.vec.readBigUInt64LE(o + 16)),
      });
    }
    return Number(a.readBigUInt64LE(PM_SCAN.walk_end));
  };

  scan(q: ScanQuery, vecLen = this.vecLen): Generator<PageRegion[]> {
    return scanRanges(this.call, q, vecLen);
  }

  close(): void {
    closeSync(this.fd);
  }
}

let knowsGuard: boolean | null = null;

/**
 * Whether this kernel's PAGEMAP_SCAN reports guard regions (PAGE_IS_GUARD).
 * An unknown category bit fails the whole ioctl with EINVAL, so it is
 * probed once, on our own pagemap, before any scan asks for it.
 */
export function scanKnowsGuard(): boolean {
  if (knowsGuard !== null) return knowsGuard;
  const pm = new Pagemap(process.pid, 1);
  try {
    [...pm.scan({ start: 0x1000, end: 0x2000, returnMask: PAGE_IS.GUARD })];
    knowsGuard = true;
  } catch (err) {
    if (!(err instanceof SysError) || err.code !== 'EINVAL') throw err;
    knowsGuard = false;
  } finally {
    pm.close();
  }
  return knowsGuard;
}

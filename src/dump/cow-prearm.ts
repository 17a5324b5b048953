/**
 * Copy-on-write protection set up before the freeze, so that the freeze
 * does not pay for it.
 *
 * Write-protecting memory costs the kernel ~200 ns per present page on
 * this VM (50-80 ms per GiB of 4 KiB pages, measured with a C probe: one
 * UFFDIO_WRITEPROTECT of 1 GiB; two threads were no faster), far more than
 * the 20 ms the whole freeze may take. So it is done while the target
 * runs: a short stop makes the userfaultfd inside the target (it binds the
 * mm of its creator), the target runs on, its private anonymous VMAs are
 * registered and protected whole, and until the freeze the fault server
 * lets every write fault go by unprotecting its page (tsnap-cow.c,
 * early phase): nothing is saved, there is no snapshot yet.
 *
 * At the freeze (cow-session.ts) the worker stops unprotecting, and one
 * cheap scan of the registered VMAs (no FILE category: it costs a page
 * lookup per entry) gives both the pages to store and those among them
 * that read as written: pages written or first touched since they were
 * protected. Only those are protected again, frozen. Every page present at
 * the freeze is then protected, as if it had all been done frozen.
 *
 * Without WP_UNPOPULATED, never-touched pages carry no marker: a first
 * write there costs the target nothing, before or after the freeze (such a
 * page, touched first after the freeze, is not in the image: it was empty
 * at the freeze instant).
 */
import { readMaps } from '../proc/maps.js';
import { ProcMem, SysError } from '../sys/index.js';
import { WriteProtector } from '../sys/uffd-wp.js';
import { UFFD_FEATURE, PAGE_SIZE } from '../sys/uapi.js';
import { CTL, HUGE_PAGE } from './cow-shared.js';
import { Pagemap, PAGE_IS } from '../sys/index.js';
import { FrozenSet } from '../freeze/frozen-set.js';
import { uffdApi, uffdRegisterWp } from '../track/uffd.js';
import { classifyVma } from './memory-plan.js';
import { makeUffd, protectable, type CowWorker } from './cow-session.js';
import { closeSync } from 'node:fs';
import { mark } from '../trace.js';
import { holdPoint } from '../fault-points.js';

export interface Prearmed {
  /** Ranges registered (and protected) before the freeze, as they were then. */
  ranges: { start: number; end: number }[];
  /** The stop that made the uffd (µs): the target's only other stop. */
  stopUs: number;
  /** Registering and protecting while the target ran (µs). */
  armUs: number;
  /** Passes that protected again the pages written during the one before. */
  passes: number;
}

/** The uffd events whose writers wait for them to be read: the worker reads them in either phase. */
export const COW_UFFD_FEATURES = UFFD_FEATURE.EVENT_REMAP | UFFD_FEATURE.EVENT_REMOVE | UFFD_FEATURE.EVENT_UNMAP;

/**
 * Protects the target's private anonymous memory before the freeze and
 * hands the uffd to the worker's early phase. null when there is nothing
 * to protect or the uffd cannot be made: the dump then protects frozen, as
 * before. Tracked VMAs (a pre-dump's uffd holds them) are left out: EBUSY.
 */
export function prearmCow(pid: number, worker: CowWorker, beforePasses?: () => void): Prearmed | null {
  const vmas = readMaps(pid).filter((v) => protectable(v, classifyVma(v)));
  if (!vmas.length) return null;
  let uffd = -1;
  const t0 = process.hrtime.bigint();
  const mem = new ProcMem(pid);
  mark('cow prearm: stopping to make the uffd');
  const set = FrozenSet.freeze(pid);
  try {
    uffd = makeUffd(pid, set.processes[0], mem);
  } finally {
    set.release();
    mem.close();
  }
  const stopUs = Number(process.hrtime.bigint() - t0) / 1000;
  mark('cow prearm: released');
  if (uffd < 0) return null;
  const t1 = process.hrtime.bigint();
  const ranges: { start: number; end: number }[] = [];
  try {
    uffdApi(uffd, COW_UFFD_FEATURES);
    for (const v of vmas) {
      try {
        uffdRegisterWp(uffd, v.start, v.end - v.start);
        ranges.push({ start: v.start, end: v.end });
      } catch (err) {
        // EBUSY (tracked, or the program's own uffd), or unmapped since maps was read.
        if (!(err instanceof SysError)) throw err;
      }
    }
  } catch (err) {
    closeSync(uffd);
    throw err;
  }
  if (!ranges.length) { closeSync(uffd); return null; }
  // From here on the worker owns the uffd (stop() closes it) and lets each write fault go.
  const huge = hugeRanges(pid, ranges);
  mark(`cow prearm: ${huge.length} huge ranges, ${huge.reduce((n, r) => n + (r.end - r.start), 0) / HUGE_PAGE} huge pages`);
  worker.goEarly(uffd, huge);
  const wp = new WriteProtector(uffd);
  // ENOENT: unmapped meanwhile; the frozen scan finds whatever is there now.
  for (const r of ranges) wp.set(r.start, r.end - r.start, true);
  mark('cow prearm: protected');
  beforePasses?.();
  const passes = reprotectPasses(worker, wp, ranges);
  mark('cow prearm: passes done');
  holdPoint('cow-prearmed');
  return { ranges, stopUs, armUs: Number(process.hrtime.bigint() - t1) / 1000, passes };
}

/**
 * Where the registered ranges are backed by transparent huge pages now
 * (one PAGEMAP_SCAN; ~3.5 ms per GiB of 4 KiB pages, one entry per huge
 * page otherwise). Only a hint: a huge page split or collapsed since only
 * changes how much a fault lets go before the freeze.
 */
function hugeRanges(pid: number, ranges: readonly { start: number; end: number }[]): { start: number; end: number }[] {
  const out: { start: number; end: number }[] = [];
  let pm: Pagemap | null = null;
  try {
    pm = new Pagemap(pid);
    for (const r of ranges) {
      for (const batch of pm.scan({ start: r.start, end: r.end, categoryMask: PAGE_IS.HUGE | PAGE_IS.PRESENT, returnMask: PAGE_IS.HUGE })) {
        for (const g of batch) {
          // Whole huge pages only: a fault lets go the aligned 2 MiB around it.
          const s = Math.ceil(g.start / HUGE_PAGE) * HUGE_PAGE;
          const e = Math.floor(g.end / HUGE_PAGE) * HUGE_PAGE;
          if (s < e) out.push({ start: s, end: e });
        }
      }
    }
  } catch {
    // Without it every fault lets go one page: slower for huge pages, as correct.
  } finally {
    pm?.close();
  }
  return out;
}

/** Passes over the pages let go meanwhile; beyond, what is left goes to the freeze. */
const MAX_PASSES = 8;
/** Few enough pages let go to protect them frozen instead (~1 ms). */
const SMALL_ENOUGH = 256;

/**
 * Pages written while the protection ran were let go again; protecting
 * them again, still running, leaves fewer for the freeze, as long as a
 * pass takes less time than the target needs to write as many pages
 * (one write fault each, served in ~20 µs, against ~1-3 µs per page
 * protected): each pass is then shorter than the one before.
 */
function reprotectPasses(worker: CowWorker, wp: WriteProtector, ranges: readonly { start: number; end: number }[]): number {
  const log = worker.earlyLog;
  let seen = 0;
  let passes = 0;
  for (; passes < MAX_PASSES; passes++) {
    const upTo = Atomics.load(worker.ctl, CTL.EARLY_FAULTS);
    if (upTo - seen < SMALL_ENOUGH) break;
    if (upTo - seen > log.length) {
      // The log wrapped: protect everything again (changes nothing where still protected).
      for (const r of ranges) wp.set(r.start, r.end - r.start, true);
    } else {
      const pages: number[] = [];
      for (let i = seen; i < upTo; i++) {
        const a = log[i % log.length];
        if (a % 2) { for (let p = a - 1; p < a - 1 + HUGE_PAGE; p += PAGE_SIZE) pages.push(p); } else pages.push(a);
      }
      for (const r of pageRuns(pages, ranges)) wp.set(r.start, r.end - r.start, true);
    }
    seen = upTo;
  }
  return passes;
}

/** Sorted pages as runs, gaps of up to 16 pages bridged inside one registered range. */
function pageRuns(pages: number[], ranges: readonly { start: number; end: number }[]): { start: number; end: number }[] {
  pages.sort((a, b) => a - b);
  const out: { start: number; end: number; r: number }[] = [];
  let ri = 0;
  for (const p of pages) {
    while (ri < ranges.length && ranges[ri].end <= p) ri++;
    if (ri >= ranges.length) break;
    if (p < ranges[ri].start) continue;
    const last = out[out.length - 1];
    if (last && last.r === ri && p - last.end <= 16 * PAGE_SIZE) last.end = Math.max(last.end, p + PAGE_SIZE);
    else out.push({ start: p, end: p + PAGE_SIZE, r: ri });
  }
  return out;
}

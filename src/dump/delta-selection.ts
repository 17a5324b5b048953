/**
 * One round of incremental dumping: which pages to copy, which to record as
 * absent, given the target's live uffd-wp tracking.
 *
 * Per dumped VMA, by its state in the kernel (asked, not remembered: a VMA
 * can be unmapped and mapped again between two tsnap runs):
 * - registered with our uffd ("old"): one PAGEMAP_SCAN with
 *   PM_SCAN_WP_MATCHING returns the pages written since the last round
 *   (WRITTEN and PRESENT|SWAPPED) and write-protects them again, atomically;
 * - not registered: registered now ("fresh") and copied whole: a scan with
 *   WP_MATCHING over all its present pages arms them and lists them in one
 *   step. Its unpopulated parts are recorded as absent, so that nothing of an
 *   older mapping at the same address leaks in from the parent;
 * - cannot be registered (the program's own userfaultfd: EBUSY; no
 *   VM_MAYWRITE: EPERM; droppable: EINVAL): "untracked", copied whole every
 *   round;
 * - shared memory (MAP_SHARED anonymous): "untracked" too. Write-protection
 *   lives in each process's page tables, so a write through another
 *   process's mapping (a parent or child sharing it) would go unseen; its
 *   pages are every page its object holds (shared-memory.ts).
 * Pages the chain holds that are no longer present (madvise(DONTNEED),
 * munmap + mmap within a round) are recorded as absent.
 *
 * Guard regions are never selected nor write-protected (memory-plan.ts).
 * Only present pages are ever write-protected: scans always ask for
 * PRESENT|SWAPPED, which also keeps the kernel off its fast path (where an
 * unpopulated pte counts as written and gets a marker, i.e. page tables for
 * every page of a sparse reservation).
 */
import { mark } from '../trace.js';
import { Pagemap, PAGE_IS, PM_SCAN_WP_MATCHING, SysError, type PageRegion } from '../sys/index.js';
import type { Vma } from '../proc/maps.js';
import { RangeSelector, SCAN_ANYOF, SCAN_RETURN, SCAN_NOT_GUARD, scanPieces, type VmaClass, type DumpRange } from './memory-plan.js';
import { normalize, subtract, intersect, type Range } from '../image/ranges.js';
import { uffdRegisterWp } from '../track/uffd.js';
import { sharedAnonRanges } from './shared-memory.js';
import { regionsWithin, type EarlyScan } from './early-scan.js';

export interface DeltaSelection {
  here: DumpRange[];
  zero: Range[];
  /** What this round write-protected: to be released if the round fails. */
  armed: Range[];
  freshVmas: number;
  untrackedVmas: number;
  oldVmas: number;
}

type State = 'old' | 'fresh' | 'untracked';

/** Contiguous spans of VMAs in one state, for one scan per span. */
function spans(vmas: readonly Vma[], states: (State | null)[], want: State): Range[] {
  return normalize(vmas.filter((_, i) => states[i] === want).map((v) => ({ start: v.start, end: v.end })));
}

function select(pagemap: Pagemap, vmas: readonly Vma[], classes: readonly VmaClass[], over: Range[], flags: number, categoryMask: number): { here: DumpRange[]; zeroPfn: Range[]; seen: Range[] } {
  const here: DumpRange[] = [];
  const zeroPfn: Range[] = [];
  const seen: Range[] = [];
  for (const span of scanPieces(vmas, over, SCAN_RETURN)) {
    const selector = new RangeSelector(vmas, classes);
    for (const batch of pagemap.scan({ start: span.start, end: span.end, flags, categoryMask: categoryMask | SCAN_NOT_GUARD, categoryInverted: SCAN_NOT_GUARD, categoryAnyof: SCAN_ANYOF, returnMask: span.returnMask })) {
      for (const r of batch) {
        seen.push({ start: r.start, end: r.end });
        if (r.categories & PAGE_IS.PFNZERO) zeroPfn.push({ start: r.start, end: r.end });
      }
      here.push(...selector.select(batch));
    }
  }
  return { here, zeroPfn, seen };
}

/**
 * `chainStored`: addresses whose data the parent chain holds; null when this
 * round starts a chain (or tracking was lost): everything is fresh and no
 * absent ranges are needed. `owed`: pages earlier rounds write-protected
 * without committing an image that holds them (they died after their scan):
 * copied like written ones, since the kernel no longer reports them.
 */
export function selectDelta(uffd: number, pagemap: Pagemap, vmas: readonly Vma[], classes: readonly VmaClass[], chainStored: Range[] | null, owed: readonly Range[] = [], protect = true, beforeClearing: () => void = () => {}, early: EarlyScan | null = null): DeltaSelection {
  const dumped = vmas.map((_, i) => classes[i] !== 'notDumped');
  const first = vmas.find((_, i) => dumped[i]);
  const last = [...vmas].reverse().find((_, i) => dumped[vmas.length - 1 - i]);
  const empty: DeltaSelection = { here: [], zero: [], armed: [], freshVmas: 0, untrackedVmas: 0, oldVmas: 0 };
  if (!first || !last) return empty;

  mark('select: begin');
  // Ask the kernel which VMAs are not registered with a wp-async uffd.
  const unregistered = normalize([...pagemap.scan({
    start: first.start, end: last.end,
    categoryInverted: PAGE_IS.WPALLOWED, categoryMask: PAGE_IS.WPALLOWED, returnMask: PAGE_IS.WPALLOWED,
  })].flat());

  const states: (State | null)[] = vmas.map((v, i) => {
    if (!dumped[i]) return null;
    if (v.shared) return 'untracked';
    const isRegistered = intersect([{ start: v.start, end: v.end }], unregistered).length === 0;
    if (isRegistered && chainStored !== null) return 'old';
    if (isRegistered) return 'fresh';
    try {
      uffdRegisterWp(uffd, v.start, v.end - v.start);
      return 'fresh';
    } catch (err) {
      if (err instanceof SysError && ['EBUSY', 'EPERM', 'EINVAL', 'ENOMEM'].includes(err.code)) return 'untracked';
      throw err;
    }
  });

  mark('select: registration known');
  const freshSpans = spans(vmas, states, 'fresh');
  const oldSpans = spans(vmas, states, 'old');
  // The final round (`protect` false) ends the tracking once its image is
  // kept, and a failed one must leave the written pages marked as written
  // for the next attempt: nothing to protect. One walk of the tracked VMAs
  // without WP_MATCHING then tells both what was written and what is
  // present (for the pages dropped since, below). A round that goes on
  // tracking protects what it takes, in its own walk.
  const oneWalk = !protect && !baseline();
  // Told only when a scan here clears written bits (a final round with no
  // new VMA clears none): its record must say so first.
  if (freshSpans.length || !oneWalk) beforeClearing();
  const fresh = select(pagemap, vmas, classes, freshSpans, PM_SCAN_WP_MATCHING, 0);
  const untracked = select(pagemap, vmas, classes, spans(vmas, states, 'untracked'), 0, 0);
  mark('select: fresh and untracked');
  const walked = oneWalk ? presentRegions(pagemap, vmas, oldSpans, early) : { present: [], written: [], early: 0 };
  const { present } = walked;
  mark(walked.early ? `select: written walked, present from before the freeze in ${walked.early} pieces (${present.length} regions)` : `select: present walked (${present.length} regions)`);
  const dirty = oneWalk ? writtenOf(vmas, classes, walked.written) : select(pagemap, vmas, classes, oldSpans, PM_SCAN_WP_MATCHING, PAGE_IS.WRITTEN);
  // Present pages only, and nothing cleared: they are protected already.
  const owedNow = select(pagemap, vmas, classes, intersect(oldSpans, normalize([...owed])), 0, 0);

  mark('select: written known');
  const shared = sharedAnonRanges(pagemap.pid, vmas, classes);
  const here = mergeDumpRanges([...fresh.here, ...untracked.here, ...shared, ...dirty.here, ...owedNow.here]);
  const hereRanges = normalize(here.map((r) => ({ start: r.start, end: r.end })));
  let zero: Range[] = [];
  if (chainStored !== null) {
    // Copied whole: whatever they do not hold now is absent.
    zero.push(...subtract(spans(vmas, states, 'fresh'), hereRanges));
    zero.push(...subtract(spans(vmas, states, 'untracked'), hereRanges));
    // Written pages that now map the zero page.
    zero.push(...dirty.zeroPfn, ...owedNow.zeroPfn);
    // Pages the chain holds that the process dropped since.
    const nowHere = oneWalk ? [...new RangeSelector(vmas, classes).select(present)] : select(pagemap, vmas, classes, oldSpans, 0, 0).here;
    const now = nowHere.map((r) => ({ start: r.start, end: r.end }));
    zero.push(...subtract(intersect(chainStored, oldSpans), normalize([...now, ...hereRanges])));
    zero = subtract(normalize(zero), hereRanges);
  }
  mark('select: done');
  return {
    here,
    zero,
    armed: normalize([...fresh.seen, ...dirty.seen]),
    freshVmas: states.filter((s) => s === 'fresh').length,
    untrackedVmas: states.filter((s) => s === 'untracked').length,
    oldVmas: states.filter((s) => s === 'old').length,
  };
}

/** TSNAP_FROZEN_BASELINE=1: the final round walks and protects as a pre-dump does (bench/frozen.ts measures against it). */
const baseline = () => process.env.TSNAP_FROZEN_BASELINE === '1';

function presentQuery(span: Range, returnMask: number) {
  return { start: span.start, end: span.end, categoryMask: SCAN_NOT_GUARD, categoryInverted: SCAN_NOT_GUARD, categoryAnyof: SCAN_ANYOF, returnMask };
}

/**
 * Written pages that are present or swapped, and not guards. Not the
 * kernel's quicker WRITTEN-only form: that one reports every unpopulated
 * entry of a page table as written too.
 */
function writtenQuery(span: Range) {
  return { start: span.start, end: span.end, categoryMask: PAGE_IS.WRITTEN | SCAN_NOT_GUARD, categoryInverted: SCAN_NOT_GUARD, categoryAnyof: SCAN_ANYOF, returnMask: PAGE_IS.WRITTEN | PAGE_IS.PRESENT | PAGE_IS.SWAPPED | PAGE_IS.PFNZERO };
}

/**
 * Present (or swapped) regions over `over`, and the regions to find the
 * written pages in (WRITTEN among their categories); nothing is protected.
 * One walk asks for both; where `early` covered an anonymous piece (dump/early-scan.ts,
 * proved still valid by the caller), its present regions are taken and the
 * walk asks only for the written ones: the kernel then reports a handful
 * of regions instead of extending one for every present page. `early`:
 * how many pieces came from it.
 */
function presentRegions(pagemap: Pagemap, vmas: readonly Vma[], over: Range[], early: EarlyScan | null): { present: PageRegion[]; written: PageRegion[]; early: number } {
  const present: PageRegion[] = [];
  const written: PageRegion[] = [];
  const full = SCAN_RETURN | PAGE_IS.WRITTEN;
  let at = 0;
  let fromEarly = 0;
  for (const piece of scanPieces(vmas, over, full)) {
    const anonymous = (piece.returnMask & PAGE_IS.FILE) === 0;
    if (early && anonymous && subtract([piece], early.covered).length === 0) {
      const got = regionsWithin(early.present, piece, at);
      at = got.next;
      present.push(...got.regions);
      for (const batch of pagemap.scan(writtenQuery(piece))) written.push(...batch);
      fromEarly++;
      continue;
    }
    for (const batch of pagemap.scan(presentQuery(piece, piece.returnMask))) {
      present.push(...batch);
      written.push(...batch);
    }
  }
  return { present, written, early: fromEarly };
}

/** What select() with WP_MATCHING on WRITTEN returns, from regions already read (nothing protected: `seen` is empty). */
function writtenOf(vmas: readonly Vma[], classes: readonly VmaClass[], regions: readonly PageRegion[]): { here: DumpRange[]; zeroPfn: Range[]; seen: Range[] } {
  const written = regions.filter((r) => r.categories & PAGE_IS.WRITTEN);
  const zeroPfn = written.filter((r) => r.categories & PAGE_IS.PFNZERO).map((r) => ({ start: r.start, end: r.end }));
  return { here: [...new RangeSelector(vmas, classes).select(written)], zeroPfn, seen: [] };
}

/** Sorted, with overlapping or touching ranges of one VMA joined: no page is selected twice. */
export function mergeDumpRanges(rs: DumpRange[]): DumpRange[] {
  const sorted = [...rs].sort((a, b) => a.start - b.start);
  const out: DumpRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && last.vma === r.vma && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else if (last && r.start < last.end) {
      // Ranges never cross a VMA boundary: overlap with another VMA cannot happen.
      throw new Error(`selected ranges of two VMAs overlap at 0x${r.start.toString(16)}`);
    } else out.push({ ...r });
  }
  return out;
}

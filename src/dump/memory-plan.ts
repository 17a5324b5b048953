/**
 * Which memory goes into an image: pure decisions over the VMA list and the
 * page ranges PAGEMAP_SCAN reports, kept apart from the kernel calls so they
 * can be tested on their own.
 *
 * Stored: private pages that are not page-cache pages (anonymous memory and
 * the written, copy-on-write pages of private file mappings) and the pages of
 * shared anonymous memory. Not stored: pages never touched, zero-page
 * mappings, and file pages a restore reads back from the file itself.
 */
import { PAGE_IS, scanKnowsGuard, type PageRegion } from '../sys/index.js';
import type { Vma } from '../proc/maps.js';
import type { VmaSpecial } from '../../formats/schema.js';
import type { Range } from '../image/ranges.js';

export type VmaClass = 'private' | 'sharedAnon' | 'notDumped';

export function specialOf(v: Vma): VmaSpecial {
  switch (v.path) {
    case '[heap]': return 'heap';
    case '[stack]': return 'stack';
    case '[vdso]': return 'vdso';
    case '[vvar]': return 'vvar';
    case '[vvar_vclock]': return 'vvar_vclock';
    case '[vsyscall]': return 'vsyscall';
    default: return null;
  }
}

export function classifyVma(v: Vma): VmaClass {
  const special = specialOf(v);
  if (special === 'vdso' || special === 'vvar' || special === 'vvar_vclock' || special === 'vsyscall') return 'notDumped';
  if (!v.shared) return 'private';
  // MAP_SHARED|MAP_ANONYMOUS is shmem that shows as a deleted /dev/zero.
  if (v.path === '/dev/zero' && v.deleted) return 'sharedAnon';
  // Shared file mappings keep their data in the file.
  return 'notDumped';
}

/**
 * Guard regions (MADV_GUARD_INSTALL) are page-table markers that look
 * SWAPPED to a scan, hold no data and fault on any access (reading them
 * through /proc/PID/mem gives EIO). Every scan that selects pages leaves
 * them out (SCAN_NOT_GUARD), which also keeps WP_MATCHING scans from
 * write-protecting them; guards.ts records them for restore.
 */
const GUARD = scanKnowsGuard() ? PAGE_IS.GUARD : 0;
export const SCAN_NOT_GUARD = GUARD;

/** One PAGEMAP_SCAN over the whole space asks for these; filtering is per VMA. */
export const SCAN_ANYOF = PAGE_IS.PRESENT | PAGE_IS.SWAPPED;
export const SCAN_RETURN = PAGE_IS.PRESENT | PAGE_IS.SWAPPED | PAGE_IS.FILE | PAGE_IS.PFNZERO | GUARD;

/** What a scan region of this class stores; shared anonymous memory is taken from its object instead (shared-memory.ts). */
function keeps(cls: VmaClass, categories: number): boolean {
  if (categories & (PAGE_IS.PFNZERO | GUARD)) return false;
  return cls === 'private' && (categories & PAGE_IS.FILE) === 0;
}

/** A range of pages to store, with the VMA it belongs to. */
export interface DumpRange {
  start: number;
  end: number;
  vma: number;
}

/**
 * Intersects scan regions (sorted, possibly spanning several VMAs) with the
 * sorted VMA list and yields the ranges to store, sorted and split at VMA
 * boundaries. Linear in regions + VMAs.
 */
export class RangeSelector {
  private vi = 0;
  constructor(private readonly vmas: readonly Vma[], private readonly classes: readonly VmaClass[]) {}

  *select(regions: readonly PageRegion[]): Generator<DumpRange> {
    const { vmas } = this;
    for (const r of regions) {
      let s = r.start;
      while (s < r.end) {
        while (this.vi < vmas.length && vmas[this.vi].end <= s) this.vi++;
        if (this.vi >= vmas.length) return;
        const v = vmas[this.vi];
        if (v.start >= r.end) break;
        const from = Math.max(s, v.start);
        const to = Math.min(r.end, v.end);
        if (from < to && keeps(this.classes[this.vi], r.categories)) {
          yield { start: from, end: to, vma: this.vi };
        }
        s = to;
        if (to === v.end) this.vi++;
      }
    }
  }
}

/** A piece of a scan over `over`, with the return mask it can ask for. */
export interface ScanPiece extends Range {
  returnMask: number;
}

/**
 * Splits the spans `over` (sorted, disjoint) at the borders between VMAs
 * with and without a file, so that the anonymous parts ask PAGEMAP_SCAN
 * for `returnMask` less PAGE_IS_FILE. FILE is the one category for which
 * the kernel looks up each present page's struct page (vm_normal_page):
 * over 256 MiB here that made a walk of the page tables 10-30x slower
 * (10-40 ms instead of ~1 ms, the last scan of a migration's frozen
 * window). Anonymous memory (heap, stack, named or not: no file behind
 * it) holds no page-cache page, so its regions come back the same.
 * Anything else, the kernel's own mappings ([vdso]: its pages read as
 * FILE) and gaps between VMAs included, keeps the full mask.
 */
export function scanPieces(vmas: readonly Vma[], over: readonly Range[], returnMask: number): ScanPiece[] {
  const out: ScanPiece[] = [];
  const push = (start: number, end: number, mask: number) => {
    if (start >= end) return;
    const last = out[out.length - 1];
    if (last && last.end === start && last.returnMask === mask) last.end = end;
    else out.push({ start, end, returnMask: mask });
  };
  const anonMask = returnMask & ~PAGE_IS.FILE;
  let vi = 0;
  for (const span of over) {
    let at = span.start;
    while (vi < vmas.length && vmas[vi].end <= at) vi++;
    for (let i = vi; i < vmas.length && vmas[i].start < span.end; i++) {
      const v = vmas[i];
      push(at, Math.min(v.start, span.end), returnMask);
      const from = Math.max(at, v.start);
      const to = Math.min(v.end, span.end);
      push(from, to, noFile(v) ? anonMask : returnMask);
      at = Math.max(at, to);
    }
    push(at, span.end, returnMask);
  }
  return out;
}

export function noFile(v: Vma): boolean {
  return v.inode === 0 && (v.path === '' || v.path === '[heap]' || v.path === '[stack]' || v.path.startsWith('[anon:'));
}

/**
 * The page selection of a full copy-on-write dump, made frozen: the same
 * pages fullSelection (page-dumper.ts) picks, found with two kinds of scan.
 *
 * The VMAs taken copy-on-write are private anonymous memory: no page there
 * is a page-cache page, so their scan leaves out the FILE category, which
 * makes the kernel look up each entry's page (18-28 ms per GiB here against
 * 3.5 ms without, C probe, 1 GiB of 4 KiB pages). It returns WRITTEN
 * instead: the pages that are not write-protected, which the caller
 * protects before the target runs. The other VMAs (file-backed, shared
 * anonymous, unregistrable) are scanned as fullSelection does, in runs that
 * skip the copy-on-write ones.
 */
import type { Pagemap, PageRegion } from '../sys/index.js';
import { PAGE_IS } from '../sys/index.js';
import type { Vma } from '../proc/maps.js';
import { RangeSelector, SCAN_ANYOF, SCAN_RETURN, SCAN_NOT_GUARD, type VmaClass, type DumpRange } from './memory-plan.js';
import { sharedAnonRanges } from './shared-memory.js';

const COW_RETURN = PAGE_IS.PRESENT | PAGE_IS.SWAPPED | PAGE_IS.PFNZERO | PAGE_IS.WRITTEN | SCAN_NOT_GUARD;

export interface CowSelection {
  /** Pages to store of the copy-on-write VMAs (sorted). */
  cow: DumpRange[];
  /** Of those, the pages not write-protected now. */
  written: DumpRange[];
  /** Pages to store of every other VMA, copied frozen (sorted). */
  frozen: DumpRange[];
}

export function selectForCow(pagemap: Pagemap, vmas: readonly Vma[], classes: readonly VmaClass[], cowVmas: ReadonlySet<number>): CowSelection {
  const out: CowSelection = { cow: [], written: [], frozen: [] };
  const cowSel = new RangeSelector(vmas, classes);
  const writtenSel = new RangeSelector(vmas, classes);
  const frozenSel = new RangeSelector(vmas, classes);
  // Runs of consecutive VMAs of one kind, each scanned with one query.
  for (let i = 0; i < vmas.length;) {
    if (classes[i] === 'notDumped' && !cowVmas.has(i)) { i++; continue; }
    const isCow = cowVmas.has(i);
    let j = i;
    while (j + 1 < vmas.length && cowVmas.has(j + 1) === isCow && (isCow || classes[j + 1] !== 'notDumped')) j++;
    const q = { start: vmas[i].start, end: vmas[j].end, categoryMask: SCAN_NOT_GUARD, categoryInverted: SCAN_NOT_GUARD, categoryAnyof: SCAN_ANYOF };
    for (const batch of pagemap.scan({ ...q, returnMask: isCow ? COW_RETURN : SCAN_RETURN })) {
      if (isCow) {
        for (const r of cowSel.select(batch)) out.cow.push(r);
        const written: PageRegion[] = batch.filter((r) => r.categories & PAGE_IS.WRITTEN);
        for (const r of writtenSel.select(written)) out.written.push(r);
      } else {
        for (const r of frozenSel.select(batch)) out.frozen.push(r);
      }
    }
    i = j + 1;
  }
  out.written = bridgeGaps(out.written, REPROTECT_GAP);
  // Shared anonymous memory comes from its object (its VMAs scan to nothing here).
  const shared = sharedAnonRanges(pagemap.pid, vmas, classes);
  if (shared.length) out.frozen = [...out.frozen, ...shared].sort((a, b) => a.start - b.start);
  return out;
}

/**
 * Protecting a page again that is still protected changes nothing, and
 * costs the kernel ~200 ns; one more ioctl through the FFI costs a few µs.
 * So written ranges of one VMA closer than this are protected as one.
 */
const REPROTECT_GAP = 16 * 4096;

/** Joins sorted ranges of the same VMA whose gap is at most `gap` bytes. */
export function bridgeGaps(ranges: readonly DumpRange[], gap: number): DumpRange[] {
  const out: DumpRange[] = [];
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last && last.vma === r.vma && r.start - last.end <= gap) last.end = r.end;
    else out.push({ ...r });
  }
  return out;
}

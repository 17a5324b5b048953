/**
 * The page-table walks of a held final round done before its freeze.
 *
 * A migration's final round learns frozen which pages were written since
 * the last round (they are copied) and which pages the chain holds that
 * the process dropped since (they become absent). The second needs every
 * present page of the tracked memory: one PAGEMAP_SCAN matching every
 * present or swapped page, where the kernel extends its output region for
 * each of them (5.3-6 ms per populated 4 GiB here, C probe, load 5-7), and
 * the guard scan is another walk of the whole space (~3 ms per 4 GiB).
 * The same walk matching written pages only takes 2.6-3.2 ms.
 *
 * So the present pages and the guards are read here, while the target
 * still runs, after the VmFlags watch started (proc/vmflags-watch.ts); at
 * the freeze the watch's checkDrops() says whether anything could have
 * taken a page out of the page tables since, and only then are these
 * reads used, for memory they covered: the frozen walk then matches
 * written pages only (delta-selection.ts). A page that became present since is
 * either written (copied) or reads as it did when absent (the zero page).
 */
import { Pagemap, PAGE_IS, type PageRegion } from '../sys/index.js';
import { readMaps } from '../proc/index.js';
import { noFile, SCAN_ANYOF, SCAN_NOT_GUARD, SCAN_RETURN } from './memory-plan.js';
import { scanGuardSpan, userSpan, type GuardsRead } from './guards.js';
import { normalize, type Range } from '../image/ranges.js';
import { mark } from '../trace.js';

export interface EarlyScan {
  /** The private anonymous memory mapped when the scan ran. */
  covered: Range[];
  /** Its present (or swapped) regions then, with their categories, sorted. */
  present: PageRegion[];
  /** The guard pages then, over the span they were looked for in. */
  guards: GuardsRead | null;
}

/** TSNAP_EARLY_SCAN=0: every walk frozen, the receiver's self-check's guard scan too, as before (for comparison). */
export function earlyScanWanted(): boolean {
  return process.env.TSNAP_EARLY_SCAN !== '0' && process.env.TSNAP_FROZEN_BASELINE !== '1';
}

/** Reads the present pages of `pid`'s private anonymous memory and its guard pages, the target running. */
export function scanBeforeFreeze(pid: number): EarlyScan {
  const vmas = readMaps(pid);
  const pagemap = new Pagemap(pid);
  try {
    const covered = normalize(vmas.filter((v) => !v.shared && noFile(v)).map((v) => ({ start: v.start, end: v.end })));
    const present: PageRegion[] = [];
    const returnMask = SCAN_RETURN & ~PAGE_IS.FILE;
    for (const r of covered) {
      for (const batch of pagemap.scan({ start: r.start, end: r.end, categoryMask: SCAN_NOT_GUARD, categoryInverted: SCAN_NOT_GUARD, categoryAnyof: SCAN_ANYOF, returnMask })) present.push(...batch);
    }
    const span = userSpan(vmas);
    const guards = span ? { ...span, spans: scanGuardSpan(pagemap, span.start, span.end) } : null;
    mark(`dump: present pages read before the freeze (${present.length} regions)`);
    return { covered, present, guards };
  } finally {
    pagemap.close();
  }
}

/** The regions of `early` inside `piece`, clipped to it; `from` is where to start looking (pieces come in address order). */
export function regionsWithin(early: readonly PageRegion[], piece: Range, from: number): { regions: PageRegion[]; next: number } {
  let i = from;
  while (i < early.length && early[i].end <= piece.start) i++;
  const regions: PageRegion[] = [];
  let j = i;
  for (; j < early.length && early[j].start < piece.end; j++) {
    const r = early[j];
    regions.push({ start: Math.max(r.start, piece.start), end: Math.min(r.end, piece.end), categories: r.categories });
  }
  // The last region may reach into the next piece.
  return { regions, next: j > i && early[j - 1].end > piece.end ? j - 1 : j };
}

/**
 * A delta round of a process that keeps writing: scanRanges over a simulated
 * WP_MATCHING PAGEMAP_SCAN that walks in bounded passes (dropping the mmap
 * lock between them, when the process writes again) and leaves walk_end
 * stale like 6.18 does; then the page placement and the run index built from
 * it. Property: no page is reported or stored twice, the index is valid, and
 * every write is either in this round or still marked written for the next.
 */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { scanRanges, type PageRegion, type ScanCall, type ScanQuery } from '../../src/sys/pagemap-scan.js';
import { PAGE_IS, PM_SCAN_WP_MATCHING } from '../../src/sys/uapi.js';
import { RangeSelector, type VmaClass } from '../../src/dump/memory-plan.js';
import { placePages, addRun } from '../../src/dump/page-dumper.js';
import { validateRuns } from '../../src/image/page-runs.js';
import { PageWhere, type PageRun, type ChunkEntry } from '../../formats/schema.js';
import type { Vma } from '../../src/proc/maps.js';

const PAGE = 4096;
const BASE = 0x7f0000000000;

interface Sim {
  pages: number;
  dirty: boolean[];
  /** Pages the process writes at each moment the kernel drops the mmap lock (between passes and calls). */
  writes: number[][];
  bounce: number;
  staleWalkEnd: boolean;
  /** false: a plain scan that reports without write-protecting. */
  clear?: boolean;
}

/**
 * PAGEMAP_SCAN with PM_SCAN_WP_MATCHING and category WRITTEN, as the kernel
 * does it: passes of at most `bounce` regions, each pass reports and clears
 * (write-protects) the written pages it covers; between passes the process
 * runs. A pass that stops for a full buffer sets walk_end; with
 * `staleWalkEnd`, a later pass that completes does not update it.
 */
function wpKernel(sim: Sim, tick: () => void): ScanCall {
  return (q: ScanQuery, start: number, _max: number, out: PageRegion[], vecLen: number): number => {
    let walkEnd = 0;
    let from = start;
    let room = vecLen;
    for (;;) {
      const buf: PageRegion[] = [];
      const cap = Math.min(sim.bounce, room);
      let stoppedAt = -1;
      for (let a = from; a < q.end; a += PAGE) {
        const i = (a - BASE) / PAGE;
        if (!sim.dirty[i]) continue;
        const last = buf[buf.length - 1];
        if (last && last.end === a) last.end = a + PAGE;
        else if (buf.length < cap) buf.push({ start: a, end: a + PAGE, categories: PAGE_IS.WRITTEN | PAGE_IS.PRESENT });
        else { stoppedAt = a; break; }
        if (sim.clear !== false) sim.dirty[i] = false; // reported and write-protected in one step
      }
      out.push(...buf);
      room -= buf.length;
      if (stoppedAt < 0) {
        if (!sim.staleWalkEnd || walkEnd === 0) walkEnd = q.end;
        return walkEnd;
      }
      walkEnd = stoppedAt;
      if (room === 0) return walkEnd;
      tick(); // the mmap lock is dropped between passes
      from = stoppedAt;
    }
  };
}

const simArb = fc.record({
  pages: fc.integer({ min: 1, max: 300 }),
  seedDirty: fc.array(fc.boolean(), { minLength: 300, maxLength: 300 }),
  writes: fc.array(fc.array(fc.nat(299), { maxLength: 12 }), { maxLength: 30 }),
  bounce: fc.integer({ min: 1, max: 8 }),
  vecLen: fc.oneof(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 5, max: 64 })),
  staleWalkEnd: fc.boolean(),
  vmaCuts: fc.array(fc.nat(299), { maxLength: 4 }),
  chunkPages: fc.integer({ min: 1, max: 16 }),
});

describe('a delta scan of a process that keeps writing', () => {
  it('reports no page twice, loses no write, and builds a valid run index', () => {
    fc.assert(fc.property(simArb, (a) => {
      const sim: Sim = {
        pages: a.pages,
        dirty: a.seedDirty.slice(0, a.pages),
        writes: a.writes.map((w) => w.filter((p) => p < a.pages)),
        bounce: a.bounce,
        staleWalkEnd: a.staleWalkEnd,
      };
      const everWritten = new Set<number>();
      sim.dirty.forEach((d, i) => { if (d) everWritten.add(i); });
      let t = 0;
      const tick = () => {
        for (const p of sim.writes[t++] ?? []) { sim.dirty[p] = true; everWritten.add(p); }
      };
      const q: ScanQuery = { start: BASE, end: BASE + a.pages * PAGE, flags: PM_SCAN_WP_MATCHING, categoryMask: PAGE_IS.WRITTEN, returnMask: 0xff };
      const kernel = wpKernel(sim, tick);
      // The process also writes between calls.
      const call: ScanCall = (qq, start, max, out, vecLen) => { const r = kernel(qq, start, max, out, vecLen); tick(); return r; };
      const regions = [...scanRanges(call, q, a.vecLen)].flat();

      const reported: number[] = [];
      for (const r of regions) for (let x = r.start; x < r.end; x += PAGE) reported.push((x - BASE) / PAGE);
      expect(new Set(reported).size).toBe(reported.length);
      for (let i = 1; i < regions.length; i++) expect(regions[i].start).toBeGreaterThanOrEqual(regions[i - 1].end);
      for (const p of everWritten) expect(reported.includes(p) || sim.dirty[p], `write to page ${p} lost`).toBe(true);

      // Through the selector (several VMAs), the placement and the index.
      const cuts = [...new Set(a.vmaCuts.filter((c) => c > 0 && c < a.pages))].sort((x, y) => x - y);
      const bounds = [0, ...cuts, a.pages];
      const vmas = bounds.slice(1).map((e, i) => ({ start: BASE + bounds[i] * PAGE, end: BASE + e * PAGE, prot: 3 } as unknown as Vma));
      const classes: VmaClass[] = vmas.map(() => 'private');
      const selection = [...new RangeSelector(vmas, classes).select(regions)];
      const runs: PageRun[] = [];
      let chunks = 0;
      for (const pl of placePages(selection, a.chunkPages)) {
        addRun(runs, { start: pl.start, pages: pl.pages, where: PageWhere.Here, chunk: pl.chunk, offset: pl.offset * PAGE });
        chunks = Math.max(chunks, pl.chunk + 1);
      }
      const chunkEntries: ChunkEntry[] = Array.from({ length: chunks }, () => ({ fileOffset: 0, storedLength: 0, rawLength: a.chunkPages * PAGE, codec: 'none', crc32: 0 }));
      validateRuns(runs, chunkEntries, 'sim');
      expect(runs.reduce((n, r) => n + r.pages, 0)).toBe(reported.length);
    }), { numRuns: 400 });
  });

  it('the stale walk_end alone (no writes) would report everything after it again', () => {
    // 20 one-page regions, bounce buffer of 4: the last pass completes and leaves walk_end at page 30.
    const sim: Sim = { pages: 40, dirty: Array.from({ length: 40 }, (_, i) => i % 2 === 0), writes: [], bounce: 4, staleWalkEnd: true, clear: false };
    const q: ScanQuery = { start: BASE, end: BASE + 40 * PAGE, returnMask: 0xff };
    const call = wpKernel(sim, () => {});
    const first: PageRegion[] = [];
    const walkEnd = call(q, q.start, 0, first, 4096);
    expect(first.length).toBe(20);
    expect(walkEnd).toBeLessThan(first[first.length - 1].end);
    const got = [...scanRanges(call, q, 4096)].flat();
    expect(got).toEqual(first);
  });
});

describe('placePages', () => {
  const sel = (r: [number, number, number][]) => r.map(([s, e, vma]) => ({ start: BASE + s * PAGE, end: BASE + e * PAGE, vma }));

  it('places a page named twice once', () => {
    const placed = [...placePages(sel([[0, 2, 0], [1, 3, 0], [3, 4, 0], [3, 4, 0]]), 16)];
    expect(placed.map((p) => [(p.start - BASE) / PAGE, p.pages])).toEqual([[0, 2], [2, 1], [3, 1]]);
  });

  it('refuses a selection that goes backwards', () => {
    expect(() => [...placePages(sel([[4, 5, 0], [1, 2, 0]]), 16)]).toThrow(/not sorted/);
  });

  it('cuts at chunk boundaries', () => {
    const placed = [...placePages(sel([[0, 5, 0], [8, 9, 1]]), 2)];
    expect(placed.map((p) => [p.chunk, p.offset, p.pages])).toEqual([[0, 0, 2], [1, 0, 2], [2, 0, 1], [2, 1, 1]]);
  });
});

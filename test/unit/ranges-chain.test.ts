/** Range algebra and chain resolution against per-page brute force. */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { normalize, subtract, intersect, union, type Range } from '../../src/image/ranges.js';
import { resolveChain, storedRanges, chainStoredRanges, type ChainLevel, type ResolvedRun } from '../../src/image/chain-index.js';
import { PageWhere, type PageRun } from '../../formats/schema.js';
import { ChainCache } from '../../src/image/chain-cache.js';
import type { Image } from '../../src/image/image-reader.js';

const P = 4096;
const N = 64;
const pageSet = fc.array(fc.boolean(), { minLength: N, maxLength: N });
const toRanges = (bits: boolean[]) => normalize(bits.flatMap((b, i) => (b ? [{ start: i * P, end: (i + 1) * P }] : [])));
const toBits = (rs: { start: number; end: number }[]) => Array.from({ length: N }, (_, i) => rs.some((r) => r.start <= i * P && i * P < r.end));

describe('range algebra', () => {
  it('normalize, subtract, intersect and union agree with per-page sets', () => {
    fc.assert(fc.property(pageSet, pageSet, (a, b) => {
      const A = toRanges(a);
      const B = toRanges(b);
      expect(toBits(subtract(A, B))).toEqual(a.map((x, i) => x && !b[i]));
      expect(toBits(intersect(A, B))).toEqual(a.map((x, i) => x && b[i]));
      expect(toBits(union(A, B))).toEqual(a.map((x, i) => x || b[i]));
      for (const rs of [subtract(A, B), intersect(A, B), union(A, B)]) {
        for (let i = 1; i < rs.length; i++) expect(rs[i].start).toBeGreaterThanOrEqual(rs[i - 1].end);
      }
    }), { numRuns: 300 });
  });
  it('normalize joins touching and overlapping ranges given in any order', () => {
    expect(normalize([{ start: 8, end: 12 }, { start: 0, end: 4 }, { start: 4, end: 6 }, { start: 10, end: 20 }])).toEqual([{ start: 0, end: 6 }, { start: 8, end: 20 }]);
  });
});


/**
 * The resolver as it was before the sweep (level by level, subtracting
 * what each level answered): the sweep must give exactly its runs, split
 * at the same addresses, as the page writer and the lazy pager rely on.
 */
function resolveLevelByLevel(chain: readonly ChainLevel[], within: readonly Range[]): ResolvedRun[] {
  let remaining = normalize(within);
  const out: ResolvedRun[] = [];
  for (let level = 0; level < chain.length && remaining.length; level++) {
    const answered: Range[] = [];
    let j = 0;
    for (const r of chain[level].runs) {
      if (r.where === PageWhere.Parent) continue;
      const rEnd = r.start + r.pages * P;
      while (j < remaining.length && remaining[j].end <= r.start) j++;
      for (let k = j; k < remaining.length && remaining[k].start < rEnd; k++) {
        const s = Math.max(r.start, remaining[k].start);
        const e = Math.min(rEnd, remaining[k].end);
        if (s >= e) continue;
        answered.push({ start: s, end: e });
        if (r.where === PageWhere.Here) out.push({ start: s, pages: (e - s) / P, image: level, chunk: r.chunk, offset: r.offset + (s - r.start) });
      }
    }
    if (chain[level].kind === 'full') break;
    remaining = subtract(remaining, normalize(answered));
  }
  return out.sort((a, b) => a.start - b.start);
}

describe('resolveChain', () => {
  const cell = fc.option(fc.record({ where: fc.constantFrom(PageWhere.Here, PageWhere.Zero, PageWhere.Parent), tag: fc.integer({ min: 0, max: 3 }) }), { nil: undefined });
  const level = fc.record({ full: fc.boolean(), cells: fc.array(cell, { minLength: N, maxLength: N }) });

  it('answers each page from the newest level that has it (property)', () => {
    fc.assert(fc.property(fc.array(level, { minLength: 1, maxLength: 5 }), pageSet, (levels, withinBits) => {
      // Encode each level as runs; the tag picks the chunk, the page index the offset.
      const chain: ChainLevel[] = levels.map((l) => {
        const runs: PageRun[] = [];
        l.cells.forEach((c, i) => {
          if (!c) return;
          runs.push({ start: i * P, pages: 1, where: c.where, chunk: c.tag, offset: i * P });
        });
        return { kind: l.full ? 'full' : 'delta', runs };
      });
      const within = toRanges(withinBits);
      const got = resolveChain(chain, within);
      expect(got).toEqual(resolveLevelByLevel(chain, within));
      const answer: ({ image: number; chunk: number } | null)[] = [];
      for (let i = 0; i < N; i++) {
        let a: { image: number; chunk: number } | null = null;
        if (withinBits[i]) {
          for (let k = 0; k < levels.length; k++) {
            const c = levels[k].cells[i];
            if (c && c.where === PageWhere.Here) { a = { image: k, chunk: c.tag }; break; }
            if (c && c.where === PageWhere.Zero) break;
            if (levels[k].full) break;
          }
        }
        answer.push(a);
      }
      const byPage: ({ image: number; chunk: number } | null)[] = Array(N).fill(null);
      for (const r of got) {
        for (let j = 0; j < r.pages; j++) {
          const page = r.start / P + j;
          expect(byPage[page]).toBeNull(); // no page answered twice
          expect(r.offset + j * P).toBe(page * P); // offsets follow the page
          byPage[page] = { image: r.image, chunk: r.chunk };
        }
      }
      expect(byPage).toEqual(answer);
      expect(toBits(storedRanges(got))).toEqual(answer.map((a) => a !== null));
      // The dump's shortcut for everything the chain stores (dump/image-process.ts).
      expect(chainStoredRanges(chain)).toEqual(storedRanges(resolveChain(chain, [{ start: 0, end: N * P }])));
    }), { numRuns: 400 });
  });

  it('gives the same runs as resolving level by level, with runs of several pages (property)', () => {
    // Runs of 1-6 pages with gaps, their chunk offsets anywhere in the chunk.
    const run = fc.record({ gap: fc.integer({ min: 0, max: 3 }), pages: fc.integer({ min: 1, max: 6 }), where: fc.constantFrom(PageWhere.Here, PageWhere.Here, PageWhere.Zero, PageWhere.Parent), chunk: fc.integer({ min: 0, max: 3 }), at: fc.integer({ min: 0, max: 20 }) });
    const lvl = fc.record({ full: fc.boolean(), runs: fc.array(run, { maxLength: 12 }) });
    const within = fc.array(fc.record({ gap: fc.integer({ min: 0, max: 8 }), pages: fc.integer({ min: 1, max: 20 }) }), { minLength: 1, maxLength: 5 });
    fc.assert(fc.property(fc.array(lvl, { minLength: 1, maxLength: 6 }), within, (levels, ws) => {
      const chain: ChainLevel[] = levels.map((l) => {
        let at = 0;
        const runs: PageRun[] = l.runs.map((r) => {
          const start = (at + r.gap) * P;
          at += r.gap + r.pages;
          return { start, pages: r.pages, where: r.where, chunk: r.chunk, offset: r.at * P };
        });
        return { kind: l.full ? 'full' : 'delta', runs };
      });
      let at = 0;
      const w = ws.map((x) => {
        const start = (at + x.gap) * P;
        at += x.gap + x.pages;
        return { start, end: at * P };
      });
      const used = chain.map(() => new Uint8Array(4));
      const got = resolveChain(chain, w, used);
      expect(got).toEqual(resolveLevelByLevel(chain, w));
      // The chunks marked are exactly those the runs read.
      const want = chain.map(() => new Uint8Array(4));
      for (const r of got) want[r.image][r.chunk] = 1;
      expect(used).toEqual(want);
    }), { numRuns: 1000 });
  });
});

describe('ChainCache', () => {
  const cell = fc.option(fc.constantFrom(PageWhere.Here, PageWhere.Zero, PageWhere.Parent), { nil: undefined });
  const level = fc.record({ full: fc.boolean(), cells: fc.array(cell, { minLength: N, maxLength: N }) });

  it('folds a chain grown one level at a time to what chainStoredRanges gives for the whole chain (property)', () => {
    fc.assert(fc.property(fc.array(level, { minLength: 1, maxLength: 6 }), fc.boolean(), (levels, skipOne) => {
      // Oldest first: level 0 is the first round, each later one a child of the one before.
      const images = levels.map((l, n) => {
        const runs: PageRun[] = [];
        l.cells.forEach((w, i) => { if (w !== undefined) runs.push({ start: i * P, pages: 1, where: w, chunk: 0, offset: i * P }); });
        return { inventory: { imageId: `id${n}`, kind: n === 0 || l.full ? 'full' : 'delta' }, pagemap: { runs } } as unknown as Image;
      });
      const cache = new ChainCache();
      for (let n = 0; n < images.length; n++) {
        // A caller may skip asking for a round (the fold then starts from further back).
        if (skipOne && n === 1) continue;
        const chain = images.slice(0, n + 1).reverse();
        const want = chainStoredRanges(chain.map((i) => ({ kind: i.inventory.kind, runs: i.pagemap.runs })));
        expect(cache.storedRanges(chain)).toEqual(want);
      }
    }), { numRuns: 300 });
  });
});

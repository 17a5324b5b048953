/** Range algebra and chain resolution against per-page brute force. */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { normalize, subtract, intersect, union } from '../../src/image/ranges.js';
import { resolveChain, storedRanges, chainStoredRanges, type ChainLevel } from '../../src/image/chain-index.js';
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

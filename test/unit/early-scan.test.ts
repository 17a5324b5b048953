/**
 * regionsWithin: the final round takes, piece by piece in address order,
 * the part of the present regions read before the freeze that lies in each
 * piece (dump/early-scan.ts). It must give exactly the clipped regions, with
 * their categories, whatever the pieces and regions.
 */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { regionsWithin } from '../../src/dump/early-scan.js';
import type { PageRegion } from '../../src/sys/pagemap-scan.js';

const PAGE = 4096;

/** Sorted, disjoint [start, end) pairs in pages from a list of (gap, length). */
function laidOut(parts: [number, number][]): [number, number][] {
  const out: [number, number][] = [];
  let at = 0;
  for (const [gap, len] of parts) {
    out.push([at + gap, at + gap + len]);
    at += gap + len;
  }
  return out;
}

describe('regionsWithin', () => {
  it('gives each piece exactly the clipped regions inside it, pieces taken in order', () => {
    const parts = fc.array(fc.tuple(fc.integer({ min: 0, max: 5 }), fc.integer({ min: 1, max: 6 })), { maxLength: 14 });
    fc.assert(fc.property(parts, parts, fc.array(fc.integer({ min: 0, max: 7 }), { minLength: 14, maxLength: 14 }), (rs, ps, cats) => {
      const regions: PageRegion[] = laidOut(rs).map(([s, e], i) => ({ start: s * PAGE, end: e * PAGE, categories: cats[i] }));
      const pieces = laidOut(ps).map(([s, e]) => ({ start: s * PAGE, end: e * PAGE }));
      let at = 0;
      for (const piece of pieces) {
        const got = regionsWithin(regions, piece, at);
        at = got.next;
        const want = regions
          .filter((r) => r.end > piece.start && r.start < piece.end)
          .map((r) => ({ start: Math.max(r.start, piece.start), end: Math.min(r.end, piece.end), categories: r.categories }));
        expect(got.regions).toEqual(want);
      }
    }));
  });
});

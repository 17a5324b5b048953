/** A VMA is mapped without write permission only when no page of the image lands in it. */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { receivesPages } from '../../src/restore/data-ranges.js';
import type { ResolvedRun } from '../../src/image/chain-index.js';

const P = 4096;

describe('receivesPages', () => {
  it('agrees with a page-by-page overlap test for any sorted runs and any VMA', () => {
    const runs = fc.array(fc.tuple(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 1, max: 4 })), { maxLength: 12 }).map((gaps) => {
      const out: ResolvedRun[] = [];
      let at = 0;
      for (const [gap, pages] of gaps) {
        at += gap * P;
        out.push({ start: at, pages, image: 0, chunk: 0, offset: 0 });
        at += pages * P;
      }
      return out;
    });
    fc.assert(fc.property(runs, fc.integer({ min: 0, max: 120 }), fc.integer({ min: 1, max: 10 }), (rs, first, len) => {
      const v = { start: first * P, end: (first + len) * P };
      const slow = rs.some((r) => r.start < v.end && r.start + r.pages * P > v.start);
      expect(receivesPages(rs)(v)).toBe(slow);
    }));
  });

  it('a run that ends where the VMA starts, or starts where it ends, is not in it', () => {
    const rs: ResolvedRun[] = [{ start: 0, pages: 1, image: 0, chunk: 0, offset: 0 }, { start: 3 * P, pages: 1, image: 0, chunk: 0, offset: 0 }];
    expect(receivesPages(rs)({ start: P, end: 3 * P })).toBe(false);
    expect(receivesPages(rs)({ start: 0, end: P })).toBe(true);
    expect(receivesPages([])({ start: 0, end: P })).toBe(false);
  });
});

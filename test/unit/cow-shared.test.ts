/** The index space and the protection split shared by the copy-on-write threads (src/dump/cow-shared.ts). */
import { describe, it, expect } from 'vitest';
import { indexRanges, indexedPages, pageIndex, rangeOf, halves } from '../../src/dump/cow-shared.js';

const P = 4096;

describe('cow index space', () => {
  it('numbers pages of sorted ranges in address order, joining touching ranges', () => {
    const r = indexRanges([{ start: 10 * P, end: 12 * P }, { start: 12 * P, end: 13 * P }, { start: 20 * P, end: 22 * P }]);
    expect(r).toEqual([{ start: 10 * P, end: 13 * P, first: 0 }, { start: 20 * P, end: 22 * P, first: 3 }]);
    expect(indexedPages(r)).toBe(5);
    expect(pageIndex(r, 10 * P)).toBe(0);
    expect(pageIndex(r, 12 * P + 100)).toBe(2);
    expect(pageIndex(r, 21 * P)).toBe(4);
    expect(pageIndex(r, 13 * P)).toBe(-1);
    expect(pageIndex(r, 9 * P)).toBe(-1);
    expect(rangeOf(r, 22 * P)).toBe(-1);
    expect(indexedPages([])).toBe(0);
  });

  it('splits the protecting into two halves of equal pages, cutting one range at a page boundary', () => {
    const [a, b] = halves([{ start: 0, end: 3 * P }, { start: 10 * P, end: 11 * P }]);
    expect(a).toEqual([{ start: 0, len: 2 * P }]);
    expect(b).toEqual([{ start: 2 * P, len: P }, { start: 10 * P, len: P }]);
    const [c, d] = halves([{ start: P, end: 6 * P }]);
    expect([...c, ...d].reduce((n, r) => n + r.len, 0)).toBe(5 * P);
    expect(c[0].start + c[0].len).toBe(d[0].start);
    expect(halves([])).toEqual([[], []]);
  });
});

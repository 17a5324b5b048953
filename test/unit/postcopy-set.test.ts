/**
 * The post-copy set the sender leaves out of its final round
 * (src/migrate/postcopy-send.ts): every page of it is dropped on the
 * receiver before the resume and sent after it, so it must stay close to
 * the pages the last round selected; the receiver's cost per range is one
 * syscall of a list, so ranges are merged only past a list's worth.
 */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { postcopyFinal, coarsen, pagesOf } from '../../src/migrate/postcopy-send.js';
import { subtract, normalize, type Range } from '../../src/image/ranges.js';
import type { VmaImage } from '../../formats/schema.js';

const P = 4096;
const anon = (start: number, end: number): VmaImage => ({ start, end, prot: 3, shared: false, pgoff: 0, path: '', special: null, file: null, dumped: true });

describe('post-copy set', () => {
  const heap = anon(0x10000000, 0x10000000 + 256 * 1024 * 1024);
  const leaveOut = postcopyFinal(true).leaveOut!;

  it('scattered dirty pages stay single pages: the set is what the round selected, not 20 times it', () => {
    // Every 7th page of 64 MiB: 2341 ranges, each a page.
    const selected: Range[] = [];
    for (let a = heap.start; a < heap.start + (64 << 20); a += 7 * P) selected.push({ start: a, end: a + P });
    const set = leaveOut([heap], selected, []);
    expect(pagesOf(set)).toBe(selected.length);
    expect(set).toHaveLength(selected.length);
  });

  it('gaps of a page or two are closed; past 8192 ranges the smallest others are', () => {
    const twoApart = [0, 3, 6].map((i) => ({ start: heap.start + i * P, end: heap.start + (i + 1) * P }));
    expect(leaveOut([heap], twoApart, [])).toEqual([{ start: heap.start, end: heap.start + 7 * P }]);
    const many: Range[] = [];
    for (let i = 0; i < 10_000; i++) many.push({ start: heap.start + i * 6 * P, end: heap.start + i * 6 * P + P });
    const set = leaveOut([heap], many, []);
    expect(set.length).toBeLessThanOrEqual(8192);
    expect(subtract(normalize(many), set)).toEqual([]);
  });

  it('coarsen keeps every page, stays within its bound, and only adds pages inside `within` (property)', () => {
    fc.assert(fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 4000 }), fc.integer({ min: 1, max: 8 })), { maxLength: 300 }), fc.integer({ min: 1, max: 64 }), (runs, max) => {
      const set = normalize(runs.map(([s, n]) => ({ start: s * P, end: (s + n) * P })));
      const within = [{ start: 0, end: 4100 * P }];
      const out = coarsen(set, within, max, 2 * P);
      expect(subtract(set, out)).toEqual([]);
      expect(subtract(out, within)).toEqual([]);
      expect(out.length).toBeLessThanOrEqual(Math.max(max, 1));
    }));
  });
});

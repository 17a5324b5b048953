/**
 * The post-copy set the sender leaves out of its final round
 * (src/migrate/postcopy-send.ts): every page of it is dropped on the
 * receiver before the resume and sent after it, so it must stay close to
 * the pages the last round selected; the receiver's cost per range is one
 * syscall of a list, so ranges are merged only past a list's worth.
 */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { postcopyFinal, coarsen, pagesOf, hotPages, takeHot, rewrittenPages } from '../../src/migrate/postcopy-send.js';
import { subtract, normalize, type Range } from '../../src/image/ranges.js';
import type { VmaImage, ThreadImage } from '../../formats/schema.js';

const P = 4096;
/** The coarsening as it was (object sort, a subtract per gap): the reference the one-pass form must match. */
function coarsenReference(set: readonly Range[], within: readonly Range[], max: number, gap = 0): Range[] {
  const rs = normalize(set).map((r) => ({ ...r }));
  const gaps: { i: number; len: number }[] = [];
  for (let i = 0; i + 1 < rs.length; i++) {
    const g = { start: rs[i].end, end: rs[i + 1].start };
    if (subtract([g], within).length === 0) gaps.push({ i, len: g.end - g.start });
  }
  gaps.sort((a, b) => a.len - b.len);
  let n = 0;
  while (n < gaps.length && (gaps[n].len <= gap || rs.length - n > max)) n++;
  const closed = new Set(gaps.slice(0, n).map((g) => g.i));
  const out: Range[] = [];
  for (let i = 0; i < rs.length; i++) {
    if (i > 0 && closed.has(i - 1)) out[out.length - 1].end = rs[i].end;
    else out.push(rs[i]);
  }
  return out;
}

/** A thread frozen with these stack and thread pointers. */
function thread(rsp: number, fsBase: number): ThreadImage {
  const regs = Buffer.alloc(216);
  regs.writeBigUInt64LE(BigInt(rsp), 152);
  regs.writeBigUInt64LE(BigInt(fsBase), 168);
  return { regs, rseq: null } as unknown as ThreadImage;
}

const anon = (start: number, end: number): VmaImage => ({ start, end, prot: 3, shared: false, pgoff: 0, path: '', special: null, file: null, dumped: true });

describe('post-copy set', () => {
  const heap = anon(0x10000000, 0x10000000 + 256 * 1024 * 1024);
  const leaveOut = postcopyFinal(true).leaveOut!;

  it('scattered dirty pages stay single pages: the set is what the round selected, not 20 times it', () => {
    // Every 7th page of 64 MiB: 2341 ranges, each a page.
    const selected: Range[] = [];
    for (let a = heap.start; a < heap.start + (64 << 20); a += 7 * P) selected.push({ start: a, end: a + P });
    const set = leaveOut([heap], selected, [], []);
    expect(pagesOf(set)).toBe(selected.length);
    expect(set).toHaveLength(selected.length);
  });

  it('gaps of a page or two are closed; past 8192 ranges the smallest others are', () => {
    const twoApart = [0, 3, 6].map((i) => ({ start: heap.start + i * P, end: heap.start + (i + 1) * P }));
    expect(leaveOut([heap], twoApart, [], [])).toEqual([{ start: heap.start, end: heap.start + 7 * P }]);
    const many: Range[] = [];
    for (let i = 0; i < 10_000; i++) many.push({ start: heap.start + i * 6 * P, end: heap.start + i * 6 * P + P });
    const set = leaveOut([heap], many, [], []);
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

  it('coarsen closes exactly the gaps the object-sorting form closed, ties in address order (property)', () => {
    fc.assert(fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 3000 }), fc.integer({ min: 1, max: 4 })), { maxLength: 400 }), fc.integer({ min: 1, max: 80 }), fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 3200 }), (runs, max, gapPages, hole) => {
      const set = normalize(runs.map(([s, n]) => ({ start: s * P, end: (s + n) * P })));
      // `within` with a hole: gaps across it stay open.
      const within = [{ start: 0, end: hole * P }, { start: (hole + 5) * P, end: 4000 * P }];
      expect(coarsen(set, within, max, gapPages * P)).toEqual(coarsenReference(set, within, max, gapPages * P));
    }));
  });

  it('the threads\' stack and thread-pointer pages stay in the final round, at most 256 pages of them', () => {
    const sp = heap.start + 100 * P + 200;
    const tp = heap.start + 300 * P;
    const selected = normalize([{ start: heap.start, end: heap.start + 400 * P }]);
    const set = leaveOut([heap], selected, [thread(sp, tp)], []);
    const kept = subtract(selected, set);
    // The stack pointer's page and its neighbours, the thread pointer's and the one below it.
    expect(kept).toEqual([{ start: heap.start + 99 * P, end: heap.start + 102 * P }, { start: heap.start + 299 * P, end: heap.start + 301 * P }]);
    // Not written in the last round: nothing to keep.
    expect(takeHot(hotPages([thread(sp, tp)]), [{ start: heap.start + 200 * P, end: heap.start + 210 * P }], 256)).toEqual([]);
    // Many threads: their stack pages first, and no more than the bound.
    const many = Array.from({ length: 400 }, (_, i) => thread(heap.start + i * 8 * P + 16, heap.start + i * 8 * P + 4 * P));
    const hot = takeHot(hotPages(many), normalize([{ start: heap.start, end: heap.end }]), 256);
    expect(pagesOf(hot)).toBe(256);
    expect(hot.every((r) => (r.start - heap.start) % (8 * P) === 0)).toBe(true);
  });

  it('pages the two rounds before wrote too stay in the final round; pages of one round only go to the set', () => {
    const pg = (i: number) => ({ start: heap.start + i * P, end: heap.start + (i + 1) * P });
    const selected = normalize([pg(10), pg(20), pg(30), pg(40)]);
    const recent = [normalize([pg(10), pg(20), pg(50)]), normalize([pg(10), pg(30), pg(20)])];
    expect(rewrittenPages(selected, recent)).toEqual([pg(10), pg(20)]);
    // One round before only (or none): nothing counts as rewritten.
    expect(rewrittenPages(selected, recent.slice(0, 1))).toEqual([]);
    const set = leaveOut([heap], selected, [], recent);
    expect(subtract(selected, set)).toEqual([pg(10), pg(20)]);
  });
});

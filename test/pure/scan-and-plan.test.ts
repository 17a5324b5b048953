/**
 * Pure logic of the dump path: PAGEMAP_SCAN paging (against a simulated
 * kernel that stops early the way the real one does) and the memory plan.
 */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { scanRanges, type ScanCall, type PageRegion } from '../../src/sys/pagemap-scan.js';
import { RangeSelector, classifyVma, type VmaClass } from '../../src/dump/memory-plan.js';
import { PAGE_IS } from '../../src/sys/uapi.js';
import type { Vma } from '../../src/proc/maps.js';

const P = 4096;

/** Per-page categories over [0, n) pages; 0 = no match. */
const pageCats = (n: number) => fc.array(fc.constantFrom(0, 0, 1, 2, 3), { minLength: n, maxLength: n });

/** The answer: maximal same-category runs of matching pages, cut at maxPages. */
function reference(cats: number[], maxPages: number): PageRegion[] {
  const out: PageRegion[] = [];
  let left = maxPages || Infinity;
  for (let i = 0; i < cats.length && left > 0; i++) {
    if (!cats[i]) continue;
    const last = out[out.length - 1];
    if (last && last.end === i * P && last.categories === cats[i]) last.end += P;
    else out.push({ start: i * P, end: (i + 1) * P, categories: cats[i] });
    left--;
  }
  return out;
}

/**
 * A kernel model: walks from start, merges equal neighbours, stops when vec
 * is full (walk_end = end of the last region written) or max_pages is hit
 * (the region is cut there), else walk_end = end.
 */
function simulatedKernel(cats: number[]): ScanCall {
  return (q, start, maxPages, out, vecLen) => {
    let found = 0;
    for (let a = start; a < q.end; a += P) {
      const c = cats[a / P];
      if (!c) continue;
      const last = out[out.length - 1];
      if (last && last.end === a && last.categories === c) last.end += P;
      else {
        if (out.length === vecLen) return a;
        out.push({ start: a, end: a + P, categories: c });
      }
      found++;
      if (maxPages && found === maxPages) return a + P;
    }
    return q.end;
  };
}

describe('scanRanges (walk_end paging)', () => {
  it('any vector size and page limit give the reference answer, joined across calls', () => {
    fc.assert(fc.property(
      fc.integer({ min: 1, max: 64 }).chain((n) => fc.tuple(pageCats(n), fc.integer({ min: 1, max: 5 }), fc.integer({ min: 0, max: 70 }))),
      ([cats, vecLen, maxPages]) => {
        const got = [...scanRanges(simulatedKernel(cats), { start: 0, end: cats.length * P, returnMask: 3, maxPages }, vecLen)].flat();
        expect(got).toEqual(reference(cats, maxPages));
        for (let i = 1; i < got.length; i++) {
          expect(got[i].start).toBeGreaterThanOrEqual(got[i - 1].end);
          expect(got[i].start === got[i - 1].end && got[i].categories === got[i - 1].categories).toBe(false);
        }
      },
    ), { numRuns: 300 });
  });

  it('a kernel that makes no progress is an error, not an endless loop', () => {
    const stuck: ScanCall = (_q, start) => start;
    expect(() => [...scanRanges(stuck, { start: 0, end: 10 * P, returnMask: 1 }, 4)]).toThrow(/makes no progress/);
  });
});

describe('memory plan', () => {
  const vma = (start: number, end: number, extra: Partial<Vma> = {}): Vma => ({
    start: start * P, end: end * P, prot: 3, shared: false, offset: 0, devMajor: 0, devMinor: 0, inode: 0, path: '', deleted: false, ...extra,
  });

  it('classifies VMAs', () => {
    expect(classifyVma(vma(0, 1, { path: '[vdso]' }))).toBe('notDumped');
    expect(classifyVma(vma(0, 1, { path: '[vvar]' }))).toBe('notDumped');
    expect(classifyVma(vma(0, 1, { path: '[vvar_vclock]' }))).toBe('notDumped');
    expect(classifyVma(vma(0, 1, { path: '[vsyscall]' }))).toBe('notDumped');
    expect(classifyVma(vma(0, 1))).toBe('private');
    expect(classifyVma(vma(0, 1, { path: '[heap]' }))).toBe('private');
    expect(classifyVma(vma(0, 1, { path: '[stack]' }))).toBe('private');
    expect(classifyVma(vma(0, 1, { path: '/lib/libc.so.6', inode: 5 }))).toBe('private');
    expect(classifyVma(vma(0, 1, { shared: true, path: '/dev/zero', deleted: true, inode: 9 }))).toBe('sharedAnon');
    expect(classifyVma(vma(0, 1, { shared: true, path: '/data/file', inode: 7 }))).toBe('notDumped');
  });

  it('selects exactly the pages the per-page rule keeps, split at VMA boundaries', () => {
    const classes = ['private', 'sharedAnon', 'notDumped'] as const;
    const cats = [0, PAGE_IS.PRESENT, PAGE_IS.PRESENT | PAGE_IS.FILE, PAGE_IS.PRESENT | PAGE_IS.PFNZERO, PAGE_IS.SWAPPED];
    fc.assert(fc.property(
      fc.array(fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 1, max: 6 }), fc.constantFrom(...classes)), { minLength: 1, maxLength: 8 }),
      fc.array(fc.constantFrom(...cats), { minLength: 80, maxLength: 80 }),
      (specs, pageCat) => {
        const vmas: Vma[] = [];
        const cls: VmaClass[] = [];
        let at = 0;
        for (const [gap, len, c] of specs) {
          at += gap;
          vmas.push(vma(at, at + len));
          cls.push(c);
          at += len;
        }
        // Scan regions as the kernel would report them: runs of equal categories, ignoring VMAs.
        const regions = reference(pageCat.map((c) => c), 0).filter((r) => r.start < at * P);
        const got = [...new RangeSelector(vmas, cls).select(regions)];
        const pages = new Set<number>();
        for (const r of got) {
          const v = vmas[r.vma];
          expect(r.start >= v.start && r.end <= v.end).toBe(true);
          for (let a = r.start; a < r.end; a += P) pages.add(a);
        }
        for (let i = 1; i < got.length; i++) expect(got[i].start).toBeGreaterThanOrEqual(got[i - 1].end);
        const want = new Set<number>();
        vmas.forEach((v, i) => {
          for (let a = v.start; a < v.end; a += P) {
            const c = pageCat[a / P] ?? 0;
            if (!c || c & PAGE_IS.PFNZERO) continue;
            if (cls[i] === 'private' && !(c & PAGE_IS.FILE)) want.add(a);
            if (cls[i] === 'sharedAnon') want.add(a);
          }
        });
        expect([...pages].sort((a, b) => a - b)).toEqual([...want].sort((a, b) => a - b));
      },
    ), { numRuns: 300 });
  });
});

/** The lazy pager's bookkeeping of pages still to fill: every page is filled once, from the right place. */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { Pending } from '../../src/lazy/pending.js';

const P = 4096;

/** dest page -> src page of everything pending. */
function pages(p: Pending): Map<number, number> {
  const m = new Map<number, number>();
  for (const [dest, src, len] of p.toJSON()) for (let i = 0; i < len; i += P) m.set(dest + i, src + i);
  return m;
}

describe('lazy Pending', () => {
  it('claim takes the page and its followers within one piece, and leaves the rest', () => {
    const p = new Pending([{ dest: 0x10000, src: 0x10000, len: 8 * P }]);
    expect(p.claim(0x10000 + 2 * P + 5, 4 * P)).toEqual({ dest: 0x10000 + 2 * P, src: 0x10000 + 2 * P, len: 4 * P });
    expect(p.toJSON()).toEqual([[0x10000, 0x10000, 2 * P], [0x10000 + 6 * P, 0x10000 + 6 * P, 2 * P]]);
    expect(p.claim(0x10000 + 3 * P, P)).toBeNull();
    expect(p.has(0x10000 + P)).toBe(true);
    expect(p.has(0x10000 + 3 * P)).toBe(false);
  });

  it('mremap moves pending pages with their source; munmap and DONTNEED drop them', () => {
    const p = new Pending([{ dest: 0x100000, src: 0x100000, len: 16 * P }]);
    p.move(0x100000 + 8 * P, 0x900000, 8 * P);
    p.cut(0x100000, 0x100000 + 2 * P);
    const m = pages(p);
    expect(m.size).toBe(14);
    expect(m.get(0x900000)).toBe(0x100000 + 8 * P);
    expect(m.has(0x100000 + 8 * P)).toBe(false);
    expect(p.takeBySrc(0x100000 + 8 * P, 8 * P)).toEqual([{ dest: 0x900000, src: 0x100000 + 8 * P, len: 8 * P }]);
  });

  it('any sequence of claims, cuts and moves keeps every page at most once, with its own source', () => {
    const op = fc.oneof(
      fc.record({ k: fc.constant('claim' as const), page: fc.nat(63), max: fc.integer({ min: 1, max: 8 }) }),
      fc.record({ k: fc.constant('cut' as const), page: fc.nat(63), n: fc.integer({ min: 1, max: 8 }) }),
      fc.record({ k: fc.constant('move' as const), page: fc.nat(63), n: fc.integer({ min: 1, max: 8 }), to: fc.nat(63) }),
    );
    fc.assert(fc.property(fc.array(op, { maxLength: 30 }), (ops) => {
      const base = 0x400000;
      const p = new Pending([{ dest: base, src: base, len: 64 * P }]);
      // The model: dest page -> src page.
      let model = new Map<number, number>();
      for (let i = 0; i < 64; i++) model.set(base + i * P, base + i * P);
      for (const o of ops) {
        const at = base + o.page * P;
        if (o.k === 'claim') {
          const got = p.claim(at, o.max * P);
          if (!model.has(at)) { expect(got).toBeNull(); continue; }
          expect(got!.dest).toBe(at);
          for (let i = 0; i < got!.len; i += P) {
            expect(model.get(got!.dest + i)).toBe(got!.src + i);
            model.delete(got!.dest + i);
          }
        } else if (o.k === 'cut') {
          p.cut(at, at + o.n * P);
          for (let i = 0; i < o.n; i++) model.delete(at + i * P);
        } else {
          // Moves go to a far area (as mremap's destination is unmapped first).
          const to = 0x10000000 + o.to * P;
          p.move(at, to, o.n * P);
          const next = new Map<number, number>();
          for (const [d, s] of model) {
            if (d >= to && d < to + o.n * P) continue;
            next.set(d >= at && d < at + o.n * P ? d - at + to : d, s);
          }
          model = next;
        }
        expect(pages(p)).toEqual(model);
      }
    }));
  });
});

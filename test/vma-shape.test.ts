/**
 * The image's VMA list check takes a fast path for the common VMA
 * (image-shapes.ts: plainVmaOk): it must accept and refuse exactly what the
 * generic field walk does, and name the same field when it refuses.
 */
import { describe, it, expect } from 'vitest';
import { VMAS, VMA, VMA_GENERIC } from '../src/image/image-shapes.js';
import { arr, checkShape } from '../src/image/shape.js';
import { rng } from './helpers/rng.js';

const GENERIC_LIST = arr(VMA_GENERIC, 1 << 20);
const FAST_LIST = arr(VMA, 1 << 20);

const base = () => ({ start: 0x10000, end: 0x11000, prot: 3, shared: false, pgoff: 0, path: '', special: null as string | null, file: null as unknown, dumped: true, flags: ['mw'] as unknown });
const FILE = { dev: 2049, ino: 12, size: 4096, mtimeMs: 1.5e12, devMajor: 8, devMinor: 1, deleted: false };

/** What each check says of one VMA: null (accepted) or its error text. */
function verdict(shape: Parameters<typeof checkShape>[0], v: unknown): string | null {
  try {
    checkShape(shape, [v], 'x');
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

const BAD_VALUES: unknown[] = [undefined, null, -1, 0.5, 2 ** 64 + 4096 * 2 ** 20, Number.NaN, 8, '', 'a\0b', 'x'.repeat(4097), true, [], {}, 'heap', 'nope', ['mw'], ['MW'], ['m'], ['mwx'], 'mw', Buffer.from('a'), 1n, FILE, { ...FILE, dev: -1 }, [[0x10000, 0x11000]], [[1, 2]]];

describe('the VMA list check', () => {
  it('accepts and refuses exactly what the generic walk does, naming the same field', () => {
    const cases: unknown[] = [base(), { ...base(), flags: undefined }, { ...base(), special: 'stack' }, { ...base(), file: FILE, path: '/bin/x' }, { ...base(), guards: [[0x10000, 0x11000]] }, { ...base(), flags: [] }];
    for (const k of Object.keys(base()).concat(['guards', 'other'])) {
      for (const bad of BAD_VALUES) cases.push({ ...base(), [k]: bad });
      const without: Record<string, unknown> = base();
      delete without[k];
      cases.push(without);
    }
    const r = rng(14);
    for (let i = 0; i < 300; i++) {
      const v: Record<string, unknown> = base();
      const keys = Object.keys(v).concat(['guards']);
      for (let j = 0; j < 1 + Math.floor(r() * 3); j++) v[keys[Math.floor(r() * keys.length)]] = BAD_VALUES[Math.floor(r() * BAD_VALUES.length)];
      cases.push(v);
    }
    cases.push(null, 5, 'vma', [base()], Object.assign(Object.create(null), base()), Object.assign(Object.create({}), base()));
    let refused = 0;
    for (const v of cases) {
      const want = verdict(GENERIC_LIST, v);
      const got = verdict(FAST_LIST, v);
      expect(got, JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? `${x}n` : x))).toBe(want);
      if (want) refused++;
    }
    expect(refused).toBeGreaterThan(200);
    // The list check the images use goes through the fast path too.
    expect(verdict(VMAS, base())).toBeNull();
    expect(verdict(VMAS, { ...base(), prot: 9 })).toBe(verdict(GENERIC_LIST, { ...base(), prot: 9 }));
  });

  it('finds a field missing even when Object.prototype has one of that name', () => {
    const v: Record<string, unknown> = base();
    delete v.dumped;
    (Object.prototype as Record<string, unknown>).dumped = true;
    try {
      expect(verdict(VMAS, v)).toMatch(/dumped: missing/);
    } finally {
      delete (Object.prototype as Record<string, unknown>).dumped;
    }
  });
});

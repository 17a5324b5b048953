/** The cross-field rules of the image shapes (types and ranges are covered by the fuzz test on real images). */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { checkShape, type Shape } from '../../src/image/shape.js';
import { VMAS, TREE, INVENTORY, RUNS, RUNS_GENERIC } from '../../src/image/image-shapes.js';
import { TsnapError } from '../../src/errors.js';

const vma = (start: number, end: number, extra: object = {}) => ({
  start, end, prot: 3, shared: false, pgoff: 0, path: '', special: null, file: null, dumped: true, ...extra,
});

function refused(shape: Parameters<typeof checkShape>[0], doc: unknown, re: RegExp): void {
  let caught: unknown;
  try { checkShape(shape, doc, '/img/x'); } catch (e) { caught = e; }
  expect(caught).toBeInstanceOf(TsnapError);
  expect((caught as TsnapError).exitCode).toBe(7);
  expect((caught as TsnapError).message).toMatch(re);
  expect((caught as TsnapError).message).not.toContain('\n');
}

describe('image shapes', () => {
  it('VMAs: sorted, disjoint, page-aligned; only [vsyscall] above the user half, never dumped', () => {
    const vsyscall = vma(0xffffffffff600000, 0xffffffffff601000, { special: 'vsyscall', dumped: false, prot: 4 });
    expect(() => checkShape(VMAS, [vma(0x1000, 0x3000), vma(0x3000, 0x4000), vsyscall], 'x')).not.toThrow();
    refused(VMAS, [vma(0x3000, 0x5000), vma(0x4000, 0x6000)], /overlap or are not sorted/);
    refused(VMAS, [vma(0x1000, 0x1800)], /misaligned or empty/);
    refused(VMAS, [vma(0x2000, 0x2000)], /misaligned or empty/);
    refused(VMAS, [{ ...vsyscall, dumped: true }], /outside the user address space/);
    refused(VMAS, [vma(2 ** 47, 2 ** 47 + 4096)], /outside the user address space/);
    refused(VMAS, [vma(0x1000, 0x2000, { prot: 8 })], /\[0\]\.prot: 8 is out of range/);
  });

  it('tree manifest: one plain directory per member, zombies without one, unique pids, root first', () => {
    const m = (pid: number, dir = String(pid), extra: object = {}) => ({ pid, ppid: 1, dir, ...extra });
    const tree = (processes: object[]) => ({ formatVersion: 1, createdAt: 'now', root: 10, contents: 'dump', processes });
    expect(() => checkShape(TREE, tree([m(10), m(11), m(12, '', { zombie: { status: 0, pgid: 10, sid: 10 } })]), 'x')).not.toThrow();
    refused(TREE, tree([m(10), m(11, '../11')]), /dir: .* not a valid value/);
    refused(TREE, tree([m(10), m(11, '..')]), /dir: .* not a valid value/);
    refused(TREE, tree([m(10), m(11, '')]), /a directory is required exactly/);
    refused(TREE, tree([m(10), m(10)]), /process 10 appears twice/);
    refused(TREE, tree([m(11), m(10)]), /does not start with its root/);
  });

  it('inventory: a delta needs its parent; the parent path must be a string', () => {
    const inv = {
      formatVersion: 1, imageId: '4a988877-7270-476a-866f-012e89264334', createdAt: 'now', tool: { name: 'tsnap', version: '0' },
      kind: 'delta', parent: { path: '../1', imageId: '5a988877-7270-476a-866f-012e89264334' }, pid: 5, arch: 'x86_64', kernel: 'k',
      pageSize: 4096, chunkSize: 1 << 20, compression: 'lz4', files: {},
    };
    expect(() => checkShape(INVENTORY, inv, 'x')).not.toThrow();
    refused(INVENTORY, { ...inv, parent: null }, /a delta image without a parent/);
    refused(INVENTORY, { ...inv, parent: { ...inv.parent, path: 42 } }, /parent\.path: expected a string, got 42/);
    refused(INVENTORY, { ...inv, chunkSize: 5000 }, /chunkSize: 5000 is not a multiple of 4096/);
    // The process's start time (optional, 2026-12-03): an exact integer when present.
    expect(() => checkShape(INVENTORY, { ...inv, startTime: 123456 }, 'x')).not.toThrow();
    refused(INVENTORY, { ...inv, startTime: 1.5 }, /startTime/);
    refused(INVENTORY, { ...inv, startTime: 'x' }, /startTime/);
  });

  it('the inline check of pagemap runs accepts and refuses exactly what the generic shape does, with its message (property)', () => {
    const P = 4096;
    // Mostly valid runs, each field sometimes out of range, misaligned, fractional, of another type, or missing.
    const value = fc.oneof(
      { weight: 8, arbitrary: fc.integer({ min: 0, max: 64 }).map((n) => n * P) },
      fc.constantFrom(-P, 0.5, P + 1, 2 ** 47, 2 ** 47 + P, 2 ** 35, 2 ** 35 + 1, 3, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 1, NaN, Infinity, '4096', null, undefined, 1n, [P]),
    );
    const run = fc.oneof({ weight: 12, arbitrary: fc.tuple(value, value, fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 2 }) }, value), value, value) }, fc.array(value, { maxLength: 7 }), fc.constantFrom(null, {}, 'run', 7));
    const outcome = (shape: Shape, v: unknown): string => {
      try { checkShape(shape, { runs: v }.runs, '/img/pagemap'); return 'ok'; } catch (e) { return (e as Error).message; }
    };
    fc.assert(fc.property(fc.oneof({ weight: 10, arbitrary: fc.array(run, { maxLength: 8 }) }, fc.constantFrom(null, {}, 'runs', 5)), (v) => {
      expect(outcome(RUNS, v)).toBe(outcome(RUNS_GENERIC, v));
    }), { numRuns: 3000 });
    expect(outcome(RUNS, [[0, 1, 0, 0, 0], [P, 2, 1, 3, 2 * P]])).toBe('ok');
    expect(outcome(RUNS, [[0, 1, 0, 0, 0], [P, 2, 3, 3, 2 * P]])).toMatch(/\[1\]\[2\]: 3 is out of range \[0, 2\]/);
  });
});

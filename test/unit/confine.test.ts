/** Names tsnap serve builds from wire data never leave its --dir, whatever a peer sends. */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { sep } from 'node:path';
import { inside, wirePid, migrationDirName } from '../../src/migrate/confine.js';
import { TsnapError } from '../../src/errors.js';

const ROOT = '/srv/tsnap/in';
// Path-like pieces: separators, dots and absolute paths are what an attacker would send.
const piece = fc.oneof(
  fc.string(),
  fc.constantFrom('..', '.', '/', '../..', '/etc/passwd', 'a/../../b', '', '//', 'x/..', '...'),
  fc.array(fc.constantFrom('..', '.', 'a', '', '/'), { maxLength: 6 }).map((a) => a.join('/')),
);

describe('serve path confinement', () => {
  it('inside() returns only paths strictly below the root, and refuses with a TsnapError otherwise', () => {
    fc.assert(fc.property(fc.array(piece, { minLength: 1, maxLength: 4 }), (parts) => {
      let p: string;
      try {
        p = inside(ROOT, ...parts);
      } catch (err) {
        expect(err).toBeInstanceOf(TsnapError);
        expect((err as TsnapError).exitCode).toBe(7);
        return;
      }
      expect(p.startsWith(ROOT + sep)).toBe(true);
      expect(p.split(sep)).not.toContain('..');
    }), { numRuns: 2000 });
    expect(() => inside(ROOT, '../in2')).toThrow(/would lead out of/);
    expect(() => inside(ROOT, '.')).toThrow(/would lead out of/);
    expect(inside(ROOT, '1', 'inventory')).toBe(`${ROOT}/1/inventory`);
  });

  it('wirePid() accepts positive integer pids up to the kernel limit and nothing else', () => {
    fc.assert(fc.property(fc.anything(), (v) => {
      const p = wirePid(v);
      if (p === null) return;
      expect(typeof v).toBe('number');
      expect(Number.isInteger(p) && p >= 1 && p <= 1 << 22).toBe(true);
    }), { numRuns: 2000 });
    for (const bad of ['../escape', '/abs', '7', 0, -1, 1.5, NaN, Infinity, 2 ** 23, null, undefined, {}, [1], 7n]) expect(wirePid(bad)).toBeNull();
    expect(wirePid(1)).toBe(1);
    expect(wirePid(1 << 22)).toBe(1 << 22);
  });

  it('a migration directory name is one path component inside the root', () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 1 << 22 }), fc.integer({ min: 0, max: 2 ** 45 }), fc.nat(100), (pid, now, attempt) => {
      const name = migrationDirName(pid, now, attempt);
      expect(name).toMatch(/^\d+-\d+(-\d+)?$/);
      expect(inside(ROOT, name)).toBe(`${ROOT}/${name}`);
    }));
    expect(() => migrationDirName(-1, 0)).toThrow(TsnapError);
  });
});

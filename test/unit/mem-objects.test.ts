/** Pure parts of aio rings, guard regions and deleted mappings; the image rules for them. */
import { describe, it, expect } from 'vitest';
import { checkShape } from '../../src/image/shape.js';
import { VMAS } from '../../src/image/image-shapes.js';
import { requestsFor } from '../../src/files/aio.js';
import { isMappedGhost } from '../../src/files/ghost-map.js';
import { TsnapError } from '../../src/errors.js';

const vma = (start: number, end: number, extra: object = {}) => ({
  start, end, prot: 3, shared: false, pgoff: 0, path: '', special: null, file: null, dumped: true, ...extra,
});

describe('memory objects', () => {
  it('aio: the io_setup argument that makes a ring of the same size again', () => {
    // The kernel: max(n, 4 * CPUs) * 2 + 2 events, rounded up to whole pages.
    const ringLen = (n: number, cpus: number) => {
      const events = Math.max(n, 4 * cpus) * 2 + 2;
      return Math.ceil((32 + events * 32) / 4096) * 4096;
    };
    for (const cpus of [1, 2, 8]) {
      for (const n of [1, 32, 64, 127, 128, 1000, 65536]) {
        const len = ringLen(n, cpus);
        expect(ringLen(requestsFor(len), cpus), `n=${n} cpus=${cpus}`).toBe(len);
      }
    }
  });

  it('guard regions must be page ranges inside their VMA', () => {
    expect(() => checkShape(VMAS, [vma(0x1000, 0x5000, { guards: [[0x2000, 0x3000], [0x4000, 0x5000]] })], 'x')).not.toThrow();
    for (const g of [[0x0, 0x2000], [0x4000, 0x6000], [0x2000, 0x2800], [0x3000, 0x3000]]) {
      let caught: unknown;
      try { checkShape(VMAS, [vma(0x1000, 0x5000, { guards: [g] })], '/img/x'); } catch (e) { caught = e; }
      expect(caught).toBeInstanceOf(TsnapError);
      expect((caught as Error).message).toMatch(/guard region .* is not a page range inside it/);
    }
  });

  it('mapped ghosts: deleted files only, not the kernel\'s own deleted objects', () => {
    const m = (path: string, extra: object = {}) => ({ start: 0, end: 4096, path, deleted: true, inode: 7, shared: true, ...extra });
    expect(isMappedGhost(m('/tmp/x'))).toBe(true);
    expect(isMappedGhost(m('/tmp/x', { deleted: false }))).toBe(false);
    expect(isMappedGhost(m('/dev/zero'))).toBe(false);
    expect(isMappedGhost(m('/memfd:a'))).toBe(false);
    expect(isMappedGhost(m('/[aio]'))).toBe(false);
    expect(isMappedGhost(m('/SYSV0000002a'))).toBe(false);
    expect(isMappedGhost(m('/anon_hugepage'))).toBe(false);
    expect(isMappedGhost(m('/tmp/x', { inode: 0 }))).toBe(false);
  });
});

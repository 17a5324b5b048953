/** Pure decisions of the restore's address-space rebuild. */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { findHole, mapCallFor, vmaKind } from '../../src/restore/layout-plan.js';
import { resumeRegisters } from '../../src/restore/restore.js';
import { REG_OFFSET, MAP_GROWSDOWN, MAP_SHARED, MAP_ANONYMOUS, O_RDWR, O_RDONLY } from '../../src/sys/uapi.js';
import type { VmaImage, ThreadImage } from '../../formats/schema.js';

describe('findHole', () => {
  it('returns the lowest gap that fits and never overlaps (property)', () => {
    fc.assert(fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 1, max: 20 })), { maxLength: 20 }), fc.integer({ min: 1, max: 8 }), (spans, pages) => {
      const P = 4096;
      const from = 0x10000000;
      const taken = spans.map(([s, l]) => ({ start: from + s * P, end: from + (s + l) * P }));
      const size = pages * P;
      const at = findHole(taken, size, from);
      for (const t of taken) expect(at + size <= t.start || at >= t.end).toBe(true);
      // Nothing lower fits.
      for (let a = from; a < at; a += P) expect(taken.some((t) => a < t.end && a + size > t.start)).toBe(true);
    }));
  });
});

const vma = (extra: Partial<VmaImage>): VmaImage => ({ start: 0x1000, end: 0x3000, prot: 3, shared: false, pgoff: 0, path: '', special: null, file: null, dumped: true, ...extra });
const file = { dev: 1, ino: 2, size: 3, mtimeMs: 0, devMajor: 0, devMinor: 1, deleted: false };

describe('mapCallFor', () => {
  it('maps each kind the way it must come back', () => {
    expect(mapCallFor(vma({ special: 'stack' })).flags & MAP_GROWSDOWN).toBe(MAP_GROWSDOWN);
    expect(mapCallFor(vma({ prot: 0 })).fixProt).toBe(true); // PROT_NONE: RW while filled
    expect(vmaKind(vma({ shared: true, path: '/dev/zero', file: { ...file, deleted: true } }))).toBe('sharedAnon');
    expect(mapCallFor(vma({ shared: true, path: '/dev/zero', file: { ...file, deleted: true } })).flags & (MAP_SHARED | MAP_ANONYMOUS)).toBe(MAP_SHARED | MAP_ANONYMOUS);
    const shared = mapCallFor(vma({ shared: true, prot: 3, path: '/data', file }));
    expect(shared.file).toEqual({ path: '/data', openFlags: O_RDWR });
    expect(shared.fixProt).toBe(false);
    expect(mapCallFor(vma({ prot: 5, path: '/lib/x.so', file })).file).toEqual({ path: '/lib/x.so', openFlags: O_RDONLY });
  });
});

describe('resumeRegisters', () => {
  const thread = (rax: bigint, orig: bigint, code: number | null): ThreadImage => {
    const regs = Buffer.alloc(216);
    regs.writeBigUInt64LE(BigInt.asUintN(64, rax), REG_OFFSET.rax);
    regs.writeBigUInt64LE(BigInt.asUintN(64, orig), REG_OFFSET.orig_rax);
    regs.writeBigUInt64LE(0x401000n, REG_OFFSET.rip);
    return { regs, syscallRestart: code === null ? null : { nr: Number(orig), code } } as ThreadImage;
  };
  it('re-enters a restartable syscall', () => {
    const r = resumeRegisters(thread(-512n, 0n, 512));
    expect(r.readBigUInt64LE(REG_OFFSET.rax)).toBe(0n);
    expect(r.readBigUInt64LE(REG_OFFSET.rip)).toBe(0x400ffen);
    expect(r.readBigInt64LE(REG_OFFSET.orig_rax)).toBe(-1n);
  });
  it('returns EINTR where the restart block is lost', () => {
    const r = resumeRegisters(thread(-516n, 35n, 516));
    expect(r.readBigInt64LE(REG_OFFSET.rax)).toBe(-4n);
    expect(r.readBigUInt64LE(REG_OFFSET.rip)).toBe(0x401000n);
  });
  it('leaves a task that was not in a syscall alone', () => {
    const r = resumeRegisters(thread(7n, -1n, null));
    expect(r.readBigUInt64LE(REG_OFFSET.rax)).toBe(7n);
    expect(r.readBigUInt64LE(REG_OFFSET.rip)).toBe(0x401000n);
  });
});

/** The copy's unprotection in whole 2 MiB blocks (cow-unprotect.ts): a huge page is never unprotected in part. */
import { describe, it, expect } from 'vitest';
import { AlignedUnprotect } from '../../src/dump/cow-unprotect.js';

const M = 1 << 20;
const H = 2 * M;
const BASE = 0x7f0000000000;

function run(reads: [number, number][]): [number, number][] {
  const calls: [number, number][] = [];
  const u = new AlignedUnprotect((s, l) => calls.push([s, l]));
  for (const [s, l] of reads) u.read(s, l);
  u.flush();
  return calls;
}

describe('AlignedUnprotect', () => {
  it('holds the half of a huge page read first until the other half is read', () => {
    expect(run([[BASE, M], [BASE + M, M], [BASE + H, M], [BASE + H + M, M]])).toEqual([[BASE, H], [BASE + H, H]]);
  });

  it('never cuts inside a 2 MiB block while the reads are contiguous', () => {
    const reads: [number, number][] = [];
    for (let a = BASE + 12 * 4096; a < BASE + 5 * H; a += 3 * 4096 * 85) reads.push([a, Math.min(3 * 4096 * 85, BASE + 5 * H - a)]);
    const calls = run(reads);
    // Every cut but the first start and the last end is on a 2 MiB boundary, and the calls cover the reads exactly.
    for (let i = 0; i < calls.length; i++) {
      if (i > 0) expect(calls[i][0] % H).toBe(0);
      if (i < calls.length - 1) expect((calls[i][0] + calls[i][1]) % H).toBe(0);
      if (i > 0) expect(calls[i][0]).toBe(calls[i - 1][0] + calls[i - 1][1]);
    }
    expect(calls[0][0]).toBe(BASE + 12 * 4096);
    expect(calls[calls.length - 1][0] + calls[calls.length - 1][1]).toBe(BASE + 5 * H);
  });

  it('lets go of what it holds at a gap (the block cannot be one huge page) and at the end', () => {
    expect(run([[BASE, M], [BASE + M + 4096, 4096]])).toEqual([[BASE, M], [BASE + M + 4096, 4096]]);
  });

  it('unprotects an aligned read at once', () => {
    const calls: [number, number][] = [];
    const u = new AlignedUnprotect((s, l) => calls.push([s, l]));
    u.read(BASE, H);
    expect(calls).toEqual([[BASE, H]]);
    u.flush();
    expect(calls).toEqual([[BASE, H]]);
  });
});

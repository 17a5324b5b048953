import { describe, it, expect } from 'vitest';
import { unmergeScratch } from '../../src/dump/scratch-flags.js';

const P = 0x1000;

describe('VmFlags read while the scratch was mapped', () => {
  it('a scratch merged into the VMA above: that VMA gets the merged flags under its own start', () => {
    // Scratch at 10P..12P merged with the VMA 12P..20P: smaps listed one VMA at 10P.
    const flags = new Map([[0, ['rd', 'ex']], [10 * P, ['rd', 'wr', 'dc']], [20 * P, ['rd']]]);
    unmergeScratch(flags, { addr: 10 * P, end: 12 * P });
    expect(flags.get(12 * P)).toEqual(['rd', 'wr', 'dc']);
  });

  it('a scratch merged into both neighbours: the upper one gets the flags of the lower', () => {
    const flags = new Map([[4 * P, ['rd', 'wr', 'hg']], [30 * P, ['rd']]]);
    unmergeScratch(flags, { addr: 10 * P, end: 12 * P });
    expect(flags.get(12 * P)).toEqual(['rd', 'wr', 'hg']);
    expect(flags.get(4 * P)).toEqual(['rd', 'wr', 'hg']);
  });

  it('a VMA of its own above an unmerged scratch keeps its own flags', () => {
    const flags = new Map([[10 * P, ['rd', 'wr', 'ex']], [12 * P, ['rd', 'wr', 'dd']]]);
    unmergeScratch(flags, { addr: 10 * P, end: 12 * P });
    expect(flags.get(12 * P)).toEqual(['rd', 'wr', 'dd']);
  });
});

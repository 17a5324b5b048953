/** A chain's address-order plan: every run in one window, chunks read once, held exactly as long as a window needs them. */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { planByAddress } from '../../src/restore/fill-plan.js';
import type { ResolvedRun } from '../../src/image/chain-index.js';

const P = 4096;

const runs = fc.array(fc.record({ gap: fc.integer({ min: 0, max: 3 }), pages: fc.integer({ min: 1, max: 8 }), image: fc.integer({ min: 0, max: 3 }), chunk: fc.integer({ min: 0, max: 5 }) }), { maxLength: 60 }).map((xs) => {
  const out: ResolvedRun[] = [];
  let at = 0;
  for (const x of xs) {
    at += x.gap;
    out.push({ start: at * P, pages: x.pages, image: x.image, chunk: x.chunk, offset: 0 });
    at += x.pages;
  }
  return out;
});

describe('planByAddress', () => {
  it('windows cover the runs in order; each chunk is listed once, first needed first, held from its first to its last window (property)', () => {
    fc.assert(fc.property(runs, fc.integer({ min: 1, max: 40 }), (rs, windowPages) => {
      const plan = planByAddress(rs, windowPages * P, [6, 6, 6, 6]);
      expect(plan.bytes).toBe(rs.reduce((n, r) => n + r.pages * P, 0));
      expect(plan.windowStart[0]).toBe(0);
      expect(plan.windowStart[plan.windows]).toBe(rs.length);
      for (let w = 0; w < plan.windows; w++) {
        const from = plan.windowStart[w];
        const to = plan.windowStart[w + 1];
        expect(to).toBeGreaterThan(from);
        // A window reaches its size with its last run, never before it.
        const bytes = rs.slice(from, to - 1).reduce((n, r) => n + r.pages * P, 0);
        expect(bytes).toBeLessThan(windowPages * P);
        for (let i = from; i < to; i++) expect(plan.windowOf[i]).toBe(w);
      }
      expect(new Set(plan.keys).size).toBe(plan.keys.length);
      const live = new Array(plan.windows).fill(0);
      plan.keys.forEach((key, c) => {
        const users = rs.map((r, i) => ({ r, i })).filter(({ r }) => r.image * 2 ** 32 + r.chunk === key);
        expect(users.length).toBeGreaterThan(0);
        for (const { i } of users) expect(plan.chunkOf[i]).toBe(c);
        expect(plan.firstWindow[c]).toBe(plan.windowOf[users[0].i]);
        expect(plan.lastWindow[c]).toBe(plan.windowOf[users[users.length - 1].i]);
        if (c > 0) expect(plan.firstWindow[c]).toBeGreaterThanOrEqual(plan.firstWindow[c - 1]);
        for (let w = plan.firstWindow[c]; w <= plan.lastWindow[c]; w++) live[w]++;
      });
      expect(plan.maxLive).toBe(Math.max(0, ...live));
    }), { numRuns: 500 });
  });

  it('a chain whose levels each go up by address holds a chunk or two per level', () => {
    // A base of 4 chunks of 64 pages, two deltas rewriting pages 1 and 2 of every 5, one chunk of 64 pages each.
    const rs: ResolvedRun[] = [];
    for (let page = 0; page < 256; page++) {
      const level = page % 5 === 1 ? 1 : page % 5 === 2 ? 0 : 2;
      const n = level === 2 ? page : Math.floor(page / 5);
      rs.push({ start: page * P, pages: 1, image: level, chunk: Math.floor(n / 64), offset: (n % 64) * P });
    }
    const plan = planByAddress(rs, 64 * P, [1, 1, 4]);
    expect(plan.windows).toBe(4);
    expect(plan.keys.length).toBe(4 + 1 + 1);
    expect(plan.maxLive).toBe(3);
  });

  it('no runs, no windows', () => {
    const plan = planByAddress([], 1 << 20, [1]);
    expect(plan.windows).toBe(0);
    expect(plan.keys).toEqual([]);
    expect(plan.maxLive).toBe(0);
  });
});

import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { PreCopyPolicy } from '../../src/dump/precopy-policy.js';

const run = (rule: ConstructorParameters<typeof PreCopyPolicy>[0], rounds: { pages: number; estimatedDowntimeMs?: number }[]) => {
  const p = new PreCopyPolicy(rule);
  for (let i = 0; i < rounds.length; i++) {
    const v = p.afterRound(rounds[i]);
    if (v.stop) return { at: i + 1, ...v };
  }
  return null;
};

describe('PreCopyPolicy', () => {
  it('stops on a small round, but never after the first', () => {
    expect(run({ maxRounds: 10 }, [{ pages: 3 }, { pages: 60 }])).toMatchObject({ at: 2, converged: true, reason: 'round 2 wrote 60 pages (<= 64)' });
  });
  it('stops when rounds stop shrinking (from the third on), as not converging', () => {
    expect(run({ maxRounds: 10 }, [{ pages: 1000 }, { pages: 500 }, { pages: 460 }])).toMatchObject({ at: 3, converged: false, reason: 'not converging: round 3 wrote 460 pages after 500' });
    expect(run({ maxRounds: 10 }, [{ pages: 1000 }, { pages: 990 }, { pages: 400 }, { pages: 100 }, { pages: 50 }])).toMatchObject({ at: 5, converged: true });
  });
  it('stops when the predicted downtime fits the budget', () => {
    expect(run({ maxRounds: 10, downtimeBudgetMs: 50 }, [{ pages: 9000, estimatedDowntimeMs: 10 }, { pages: 4000, estimatedDowntimeMs: 40 }]))
      .toMatchObject({ at: 2, converged: true, reason: 'converged: the last round fits the 50 ms downtime budget (estimated 40.0 ms)' });
  });
  it('stops at the cap', () => {
    expect(run({ maxRounds: 3 }, [{ pages: 1000 }, { pages: 500 }, { pages: 200 }, { pages: 100 }])).toMatchObject({ at: 3, converged: false, reason: 'reached the iteration cap (3)' });
  });
  it('always stops within maxRounds, and only at a round the rules name (property)', () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 12 }), fc.array(fc.integer({ min: 0, max: 100_000 }), { minLength: 12, maxLength: 12 }), (max, pages) => {
      const v = run({ maxRounds: max }, pages.map((n) => ({ pages: n })));
      expect(v).not.toBeNull();
      expect(v!.at).toBeLessThanOrEqual(max);
      const k = v!.at;
      const small = k > 1 && pages[k - 1] <= 64;
      const flat = k > 2 && pages[k - 1] >= pages[k - 2] * 0.9;
      expect(small || flat || k === max).toBe(true);
    }));
  });
});

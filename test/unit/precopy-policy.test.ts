import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { PreCopyPolicy, describeAid } from '../../src/dump/precopy-policy.js';

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

  describe('convergence (migrate)', () => {
    const flat = (n: number) => Array.from({ length: n }, () => ({ pages: 5000, estimatedDowntimeMs: 400 }));
    const verdicts = (rule: ConstructorParameters<typeof PreCopyPolicy>[0], rounds: { pages: number; estimatedDowntimeMs?: number }[]) => {
      const p = new PreCopyPolicy(rule);
      const out = [];
      for (const r of rounds) {
        const v = p.afterRound(r);
        out.push(v);
        if (v.stop) break;
      }
      return { out, aid: p.convergenceAid() };
    };
    it('throttles a writer that does not halve its rounds: 20%, then +10% per round, QEMU-style', () => {
      const { out, aid } = verdicts({ maxRounds: 6, downtimeBudgetMs: 50, whenNotConverging: 'throttle' }, [{ pages: 262144, estimatedDowntimeMs: 900 }, ...flat(10)]);
      expect(out.map((v) => (v.stop ? 'stop' : v.throttlePct ?? 0))).toEqual([0, 0, 20, 30, 40, 'stop']);
      expect(out.at(-1)).toMatchObject({ stop: true, converged: false, reason: 'reached the iteration cap (6)' });
      expect(aid).toEqual({ throttlePct: 40, fromRound: 3 });
      expect(describeAid(aid, false)).toBe('throttled to 60% CPU from round 4 (40% taken away)');
    });
    it('a throttled writer that then converges stops as converged, and keeps its throttle in the report', () => {
      const { out, aid } = verdicts({ maxRounds: 10, downtimeBudgetMs: 50, whenNotConverging: 'throttle' },
        [{ pages: 262144, estimatedDowntimeMs: 900 }, { pages: 20000, estimatedDowntimeMs: 200 }, { pages: 15000, estimatedDowntimeMs: 150 }, { pages: 4000, estimatedDowntimeMs: 40 }]);
      expect(out.map((v) => (v.stop ? 'stop' : v.throttlePct ?? 0))).toEqual([0, 0, 20, 'stop']);
      expect(out.at(-1)).toMatchObject({ converged: true });
      expect(aid).toEqual({ throttlePct: 20, fromRound: 3 });
    });
    it('a shrinking writer is never throttled', () => {
      const { out, aid } = verdicts({ maxRounds: 10, downtimeBudgetMs: 50, whenNotConverging: 'throttle' },
        [{ pages: 262144, estimatedDowntimeMs: 900 }, { pages: 20000, estimatedDowntimeMs: 200 }, { pages: 9000, estimatedDowntimeMs: 90 }, { pages: 3000, estimatedDowntimeMs: 30 }]);
      expect(out.every((v) => v.stop || v.throttlePct === undefined)).toBe(true);
      expect(aid).toBeNull();
      expect(describeAid(aid, false)).toBeNull();
    });
    it('gives up as not converging only at the highest throttle', () => {
      const { out, aid } = verdicts({ maxRounds: 20, downtimeBudgetMs: 50, whenNotConverging: 'throttle', throttle: { maxPct: 40 } }, [{ pages: 262144 }, ...flat(19)]);
      expect(out.map((v) => (v.stop ? 'stop' : v.throttlePct ?? 0))).toEqual([0, 0, 20, 30, 40, 'stop']);
      expect(out.at(-1)).toMatchObject({ converged: false, reason: 'not converging at 40% throttle: round 6 wrote 5000 pages after 5000' });
      expect(aid?.throttlePct).toBe(40);
    });
    it('with post-copy available, stops and says to switch instead of throttling', () => {
      const { out } = verdicts({ maxRounds: 10, downtimeBudgetMs: 50, whenNotConverging: 'postcopy' }, [{ pages: 262144 }, ...flat(5)]);
      expect(out.at(-1)).toMatchObject({ stop: true, converged: false, postCopy: true });
      expect(out).toHaveLength(3);
      expect(describeAid(null, true)).toBe('switched to post-copy');
    });
    it('throttle never exceeds its maximum and the loop always ends within maxRounds (property)', () => {
      fc.assert(fc.property(fc.integer({ min: 1, max: 15 }), fc.array(fc.integer({ min: 0, max: 100_000 }), { minLength: 15, maxLength: 15 }), (max, pages) => {
        const { out } = verdicts({ maxRounds: max, downtimeBudgetMs: 50, whenNotConverging: 'throttle' }, pages.map((n) => ({ pages: n, estimatedDowntimeMs: n / 10 })));
        expect(out.at(-1)!.stop).toBe(true);
        expect(out.length).toBeLessThanOrEqual(max);
        const pcts = out.flatMap((v) => (!v.stop && v.throttlePct ? [v.throttlePct] : []));
        for (let i = 1; i < pcts.length; i++) expect(pcts[i]).toBeGreaterThan(pcts[i - 1]);
        expect(pcts.every((p) => p >= 20 && p <= 99)).toBe(true);
      }));
    });
      it('does not throttle at the floor: a round whose pages fit the budget at the best copy rate is held up by fixed costs only', () => {
      // 1 GiB copied in 4 s (268 MB/s, the best rate); then rounds of ~300 ms, mostly fixed costs.
      const slow = [{ pages: 262144, bytes: 1 << 30, ms: 4000 }, ...Array.from({ length: 6 }, () => ({ pages: 400, bytes: 400 * 4096, ms: 300 }))];
      const v = verdicts({ maxRounds: 10, downtimeBudgetMs: 50, whenNotConverging: 'throttle' }, slow.map((r) => ({ ...r, estimatedDowntimeMs: r.ms })));
      expect(v.aid).toBeNull();
      expect(v.out.at(-1)).toMatchObject({ stop: true, converged: false, reason: 'not converging: round 3 wrote 400 pages after 400' });
      // 220 MB a round: 820 ms at the best rate, far over the budget.
      const fast = [{ pages: 262144, bytes: 1 << 30, ms: 4000 }, ...Array.from({ length: 4 }, () => ({ pages: 53711, bytes: 220e6, ms: 1500 }))];
      const w = verdicts({ maxRounds: 10, downtimeBudgetMs: 50, whenNotConverging: 'throttle' }, fast.map((r) => ({ ...r, estimatedDowntimeMs: r.ms })));
      expect(w.out.map((x) => (x.stop ? 'stop' : x.throttlePct ?? 0))).toEqual([0, 0, 20, 30, 40]);
      expect(w.aid).toEqual({ throttlePct: 40, fromRound: 3 });
      // Big rounds that stopped shrinking while the copy rate fell (a loaded host): their pages, not
      // the fixed costs, keep the loop from converging, so the throttle goes on up (seen at 4 GiB).
      const big = [{ pages: 1048604, bytes: 4.3e9, ms: 70_000 }, { pages: 118152, bytes: 484e6, ms: 6_600 }, { pages: 174396, bytes: 714e6, ms: 33_000 }, { pages: 297514, bytes: 1.22e9, ms: 42_000 }, { pages: 317792, bytes: 1.3e9, ms: 41_000 }];
      const b = verdicts({ maxRounds: 10, downtimeBudgetMs: 50, whenNotConverging: 'throttle' }, big.map((r) => ({ ...r, estimatedDowntimeMs: r.ms })));
      expect(b.out.at(-1)).toMatchObject({ stop: false });
      expect(b.aid!.throttlePct).toBeGreaterThanOrEqual(30);
    });
  });
});

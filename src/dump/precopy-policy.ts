/**
 * When a pre-copy loop stops copying while the process runs and takes the
 * final round frozen: one rule for `dump --pre-dumps` and `migrate`.
 * A round is "small enough" when it wrote few pages, or (migrate) when the
 * final round it predicts fits the downtime budget; the loop also stops
 * when rounds stop shrinking (the process writes as fast as we copy), and
 * at the round cap.
 *
 * Convergence (migrate): a writer faster than the link never gets its
 * rounds to fit the budget. Instead of giving up, the loop can slow the
 * source down, as QEMU's auto-converge does: a round that wrote at least
 * half the pages of the one before (the process dirtied more than half of
 * what was sent meanwhile: QEMU's trigger) raises the throttle, first to
 * 20% then by 10% steps; while it can still be raised, "not shrinking"
 * does not end the loop. Or, once post-copy exists, the loop stops and
 * says to switch to it.
 *
 * Except at the floor: when the round's pages could be copied within the
 * budget at the best rate any round reached, what keeps its estimate over
 * the budget is the fixed cost of a round (on a busy host, a round of a
 * few hundred pages takes 100-500 ms), which no throttle reduces; a slow
 * writer there is left alone, and flat rounds end the loop as before.
 */
export interface PreCopyRule {
  /** At most this many rounds. */
  maxRounds: number;
  /** A round (after the first) of at most this many pages is small enough. Default 64. */
  smallEnoughPages?: number;
  /** A round (after the second) with at least this share of the previous one's pages is not shrinking. Default 0.9. */
  shrinkRatio?: number;
  /** migrate: the predicted final round's downtime (ms) that is small enough. */
  downtimeBudgetMs?: number;
  /**
   * migrate: what a loop that does not converge does. 'stop' (default):
   * take the final round as it is. 'throttle': slow the source down step
   * by step (see ThrottleSteps). 'postcopy': stop with `postCopy: true`,
   * for a caller that can resume on the receiver and page the rest in.
   */
  whenNotConverging?: 'stop' | 'throttle' | 'postcopy';
  throttle?: ThrottleSteps;
}

/** QEMU's auto-converge defaults: cpu-throttle-initial 20, -increment 10, max-cpu-throttle 99. */
export interface ThrottleSteps {
  initialPct?: number;
  stepPct?: number;
  maxPct?: number;
  /** A round with at least this share of the previous one's pages calls for (more) throttle. Default 0.5. */
  highRatio?: number;
}

export interface RoundFigures {
  pages: number;
  /** migrate: how long the final round would take, from this round's size and the measured bandwidth. */
  estimatedDowntimeMs?: number;
  /** migrate: bytes this round copied (uncompressed) and how long it took, copy and send (for the floor, see above). */
  bytes?: number;
  ms?: number;
}

export type PreCopyVerdict =
  /** Go on; with throttlePct, hold the source to that throttle (share of its CPU time taken away) for the next rounds. */
  | { stop: false; throttlePct?: number }
  | { stop: true; converged: boolean; reason: string; postCopy?: boolean };

/** How the loop got a writer to converge, for the report. */
export interface ConvergenceAid {
  throttlePct: number;
  /** The round after which the throttle first went on (it applies from the next round). */
  fromRound: number;
}

export class PreCopyPolicy {
  private prev: RoundFigures | null = null;
  private rounds = 0;
  private readonly small: number;
  private readonly shrink: number;
  private throttlePct = 0;
  private throttledFrom = 0;
  /** Best copy rate seen (bytes per ms). */
  private copyRate = 0;

  constructor(private readonly rule: PreCopyRule) {
    this.small = rule.smallEnoughPages ?? 64;
    this.shrink = rule.shrinkRatio ?? 0.9;
  }

  /** After each round: whether to stop, and why. */
  afterRound(r: RoundFigures): PreCopyVerdict {
    const k = ++this.rounds;
    const prev = this.prev;
    this.prev = r;
    const budget = this.rule.downtimeBudgetMs;
    if (k > 1 && budget !== undefined && r.estimatedDowntimeMs !== undefined && r.estimatedDowntimeMs <= budget) {
      return { stop: true, converged: true, reason: `converged: the last round fits the ${budget} ms downtime budget (estimated ${r.estimatedDowntimeMs.toFixed(1)} ms)` };
    }
    if (k > 1 && r.pages <= this.small) return { stop: true, converged: true, reason: `round ${k} wrote ${r.pages} pages (<= ${this.small})` };
    const mode = this.rule.whenNotConverging ?? 'stop';
    const steps = this.rule.throttle ?? {};
    if (r.bytes !== undefined && r.ms) this.copyRate = Math.max(this.copyRate, r.bytes / r.ms);
    const atFloor = budget !== undefined && r.bytes !== undefined && this.copyRate > 0 && r.bytes / this.copyRate <= budget;
    const high = prev !== null && k > 1 && r.pages >= prev.pages * (steps.highRatio ?? 0.5) && !atFloor;
    if (high && mode === 'postcopy') {
      return { stop: true, converged: false, postCopy: true, reason: `not converging: round ${k} wrote ${r.pages} pages after ${prev!.pages}; switching to post-copy` };
    }
    const max = steps.maxPct ?? 99;
    const raise = high && mode === 'throttle' && this.throttlePct < max;
    if (raise && k < this.rule.maxRounds) {
      const next = this.throttlePct === 0 ? (steps.initialPct ?? 20) : this.throttlePct + (steps.stepPct ?? 10);
      this.throttlePct = Math.min(next, max);
      if (!this.throttledFrom) this.throttledFrom = k;
      return { stop: false, throttlePct: this.throttlePct };
    }
    // A flat round of a fast writer raised the throttle above; one of a slow
    // writer is at the floor of fixed per-round costs: more rounds do not help.
    if (prev && k > 2 && !raise && r.pages >= prev.pages * this.shrink) {
      const at = this.throttlePct ? ` at ${this.throttlePct}% throttle` : '';
      return { stop: true, converged: false, reason: `not converging${at}: round ${k} wrote ${r.pages} pages after ${prev.pages}` };
    }
    if (k >= this.rule.maxRounds) return { stop: true, converged: false, reason: `reached the iteration cap (${this.rule.maxRounds})` };
    return { stop: false };
  }

  /** The throttle the loop ended with, or null when it never needed one. */
  convergenceAid(): ConvergenceAid | null {
    return this.throttlePct ? { throttlePct: this.throttlePct, fromRound: this.throttledFrom } : null;
  }
}

/** The report's words for how a migration converged: "throttled to 60% CPU from round 3". */
export function describeAid(aid: ConvergenceAid | null, postCopy: boolean): string | null {
  if (postCopy) return 'switched to post-copy';
  if (!aid) return null;
  return `throttled to ${100 - aid.throttlePct}% CPU from round ${aid.fromRound + 1} (${aid.throttlePct}% taken away)`;
}

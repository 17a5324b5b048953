/**
 * When a pre-copy loop stops copying while the process runs and takes the
 * final round frozen: one rule for `dump --pre-dumps` and `migrate`.
 * A round is "small enough" when it wrote few pages, or (migrate) when the
 * final round it predicts fits the downtime budget; the loop also stops
 * when rounds stop shrinking (the process writes as fast as we copy), and
 * at the round cap.
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
}

export interface RoundFigures {
  pages: number;
  /** migrate: how long the final round would take, from this round's size and the measured bandwidth. */
  estimatedDowntimeMs?: number;
}

export type PreCopyVerdict = { stop: false } | { stop: true; converged: boolean; reason: string };

export class PreCopyPolicy {
  private prev: RoundFigures | null = null;
  private rounds = 0;
  private readonly small: number;
  private readonly shrink: number;

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
    if (prev && k > 2 && r.pages >= prev.pages * this.shrink) {
      return { stop: true, converged: false, reason: `not converging: round ${k} wrote ${r.pages} pages after ${prev.pages}` };
    }
    if (k >= this.rule.maxRounds) return { stop: true, converged: false, reason: `reached the iteration cap (${this.rule.maxRounds})` };
    return { stop: false };
  }
}

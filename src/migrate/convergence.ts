/**
 * What a migration does for a source that writes faster than the link:
 * the glue between the pre-copy policy's decision (src/dump/precopy-policy.ts)
 * and its means (throttle.ts now; post-copy once the sender has it). Kept
 * out of sender.ts so that the loop there only asks three things: the
 * rule, what to do after each verdict, and what to say in the report.
 */
import type { PreCopyRule, PreCopyVerdict, ConvergenceAid } from '../dump/precopy-policy.js';
import { describeAid } from '../dump/precopy-policy.js';
import { SourceThrottle, sweepDeadThrottles } from './throttle.js';
import { pausePoint } from '../fault-points.js';

export type NotConverging = 'throttle' | 'postcopy' | 'stop';

export interface ConvergenceOptions {
  pid: number;
  tree?: boolean;
  /**
   * 'throttle' (default): QEMU-style auto-converge. 'postcopy': the loop
   * stops with `switchToPostCopy` set, for a sender that can resume the
   * process on the receiver and page the rest in. 'stop': neither.
   */
  whenNotConverging?: NotConverging;
  warn?: (m: string) => void;
  onEvent?: (e: Record<string, unknown>) => void;
}

export class Convergence {
  private throttle: SourceThrottle | null = null;
  private readonly mode: NotConverging;
  /** The throttle actually in force at the end (the policy's wish may have failed to apply). */
  private applied: ConvergenceAid | null = null;
  /** Set when the policy chose post-copy: the sender's cue to resume on the receiver instead of a stop-and-copy final round. */
  switchToPostCopy = false;

  constructor(private readonly opts: ConvergenceOptions) {
    let mode = opts.whenNotConverging ?? 'throttle';
    if (mode === 'throttle') {
      const why = SourceThrottle.unavailable();
      if (why) {
        opts.warn?.(`cannot throttle the source if it writes faster than the link: ${why}`);
        mode = 'stop';
      } else {
        sweepDeadThrottles();
        this.throttle = new SourceThrottle(opts.pid, opts.tree ?? false, opts.warn);
      }
    }
    this.mode = mode;
  }

  /** The part of the pre-copy rule this decides. */
  rule(): Pick<PreCopyRule, 'whenNotConverging'> {
    return { whenNotConverging: this.mode };
  }

  /** After the policy's verdict on round k: apply the throttle it asks for. */
  afterVerdict(v: PreCopyVerdict, k: number): void {
    if (v.stop) {
      if (v.postCopy) this.switchToPostCopy = true;
      return;
    }
    if (v.throttlePct === undefined || !this.throttle) return;
    try {
      const s = this.throttle.set(v.throttlePct);
      this.applied = { throttlePct: s.throttlePct, fromRound: this.applied?.fromRound ?? k };
      pausePoint('migrate-throttled');
      this.opts.onEvent?.({ event: 'throttle', iteration: k, throttlePct: s.throttlePct, allowedCpuPct: +(s.allowedCpus * 100).toFixed(2), quotaUs: s.quotaUs, periodUs: s.periodUs, pausesUpToMs: +((s.periodUs - s.quotaUs) / 1000).toFixed(1) });
    } catch (err) {
      // A throttle that cannot be applied is given up, never left half on.
      this.throttle.release();
      this.throttle = null;
      this.applied = null;
      this.opts.warn?.(`could not throttle the source, going on without: ${(err as Error).message}`);
    }
  }

  /**
   * The quota off, the tasks still in the throttle cgroups: for the final
   * round, right before its freeze, so that the source neither runs
   * unthrottled while the final dump gets ready (it would write a bigger
   * last delta) nor is slow to stop (a throttled task waits for its next
   * period) or to run the dump's remote syscalls.
   */
  lift(): void {
    this.throttle?.lift();
  }

  /** The source runs at full speed again, in its own cgroups. Call on every way out. */
  release(): void {
    this.throttle?.release();
  }

  /** "throttled to 60% CPU from round 4 (40% taken away)", "switched to post-copy", or null. */
  describe(): string | null {
    return describeAid(this.applied, this.switchToPostCopy);
  }
}

/**
 * The frozen window of a copy-on-write dump, from the freeze to the last
 * thread let go, in the real-time class, with what it waited for a CPU.
 *
 * That window is a chain of short steps (the guardian's freeze, remote
 * syscalls, scans, protecting again, the guardian's release), each a
 * wake-up of tsnap's main thread or of the guardian. On this 2-core host at
 * load 4-10 the scheduler ran other tasks between them: the same 1 GiB
 * dump was frozen 9 ms one time and 40-70 ms another, the extra being time
 * the two threads were runnable and waited (schedstat), not work. As for a
 * migration's downtime (migrate/window-priority.ts, which says why a nice
 * value does not do it), both go to SCHED_FIFO at its lowest priority for
 * the window only (from the protection passes before it, see raise()), and back right after the release: a copy-on-write
 * window is ~10 ms of work, so the real-time class is held that long, not
 * for a frozen copy's seconds (which is why other dumps do not take it).
 * The fault server thread is left as it was: nothing faults while frozen.
 *
 * The target's threads too, from the freeze to their release: frozen, they
 * run only the stop, the remote syscalls and the release's undo, but each
 * is a wake-up, and in their own class they waited for a CPU about as long
 * as the longest windows lasted (targetWaitUs 40-206 ms in 40-117 ms
 * windows, docs/performance.md). The guardian raises them in its FREEZE
 * and gives each its own class back in its release, whether tsnap lives or
 * not (formats/guardian-v1.md); should the guardian die instead, end()
 * puts back what it finds still raised. (Both killed at once would leave
 * a task in SCHED_FIFO 1, as it would leave one stopped mid-syscall.)
 *
 * TSNAP_COW_WINDOW_RT=0 leaves every class alone, TSNAP_COW_TARGET_RT=0 the
 * target's (for same-run comparisons); the wait figures are kept either way.
 */
import { WindowPriority, ownWindowThreads } from '../migrate/window-priority.js';
import { getSched, setSched, SCHED_FIFO, SCHED_RESET_ON_FORK, type SchedClass } from '../sys/sched.js';
import { mark } from '../trace.js';
import { readSchedTimes, type SchedTimes } from '../proc/schedstat.js';
import { listTasks } from '../proc/task.js';
import { rtWatchReady, rtWatchAdd, rtWatchForget, rtStall } from '../sys/rt-watch.js';

export interface FrozenWindowStats {
  /** Whether the window ran in the real-time class. */
  windowRt: boolean;
  /** Whether the target's threads were asked into it too (the guardian's FREEZE). */
  targetRt: boolean;
  /** From the freeze to the last thread let go: how long tsnap's main thread and the guardian waited for a CPU (µs). */
  windowWaitUs: number;
  guardianWaitUs: number;
  /**
   * How long the target's threads waited for a CPU in the same span (µs):
   * frozen, they run only the remote syscalls and the stops of the freeze
   * and the release, in their own class, which is theirs to keep. (At most
   * the first 64 threads: this is read before the freeze.)
   */
  targetWaitUs: number;
  /** The release itself (µs): the guardian letting every thread go (it waits for the target to run its undo syscalls and stop once more). */
  releaseUs: number;
  /**
   * When the real-time class's watchdog gave the window's threads their
   * class back, that long after the window began (ms): the window stalled
   * past TSNAP_RT_BOUND_MS (sys/rt-watch.ts). Null: it did not.
   */
  rtDroppedAfterMs: number | null;
}

const TARGET_THREADS_READ = 64;

export class FrozenWindow {
  private readonly prio = new WindowPriority();
  private threads: number[] = [];
  private before: (SchedTimes | null)[] = [];
  private target: { pid: number; tids: number[]; before: (SchedTimes | null)[]; classes: (SchedClass | null)[] } | null = null;
  private targetRaised = false;
  private result: FrozenWindowStats | null = null;
  private tRelease = 0n;

  /**
   * Takes the real-time class early, before the freeze: the protection
   * passes of cow-prearm.ts and the steps up to the freeze then are not
   * preempted either, and the target, writing meanwhile, leaves as little
   * as those steps take to protect again, frozen (with tsnap's thread
   * preempted there, a fast writer had let 140000 pages go by the freeze:
   * 164 ms frozen). Safe more than once.
   */
  raise(): void {
    // The guardian is running by now (the freeze before the protection, or an earlier stop, started it).
    if (!this.threads.length) this.threads = ownWindowThreads();
    if (process.env.TSNAP_COW_WINDOW_RT !== '0') this.prio.raise(this.threads);
  }

  /**
   * Right before the freeze of `pid`; which of the target's threads the
   * freeze is to raise (false: none): those on the watchdog's list, so that
   * a thread past the first TARGET_THREADS_READ, or one made since, stays
   * in its own class rather than raised without a bound.
   */
  begin(pid: number): false | ((tid: number) => boolean) {
    this.raise();
    this.before = this.threads.map((t) => readSchedTimes(t));
    let tids: number[] = [];
    try { tids = listTasks(pid).slice(0, TARGET_THREADS_READ); } catch { /* gone: the freeze says so */ }
    this.target = { pid, tids, before: tids.map((t) => readSchedTimes(pid, t)), classes: tids.map((t) => getSched(t)) };
    // Only with tsnap's own threads raised: a target ahead of the guardian would gain nothing.
    // The watchdog gives them back too should the window stall (the guardian would only at its release).
    this.targetRaised = process.env.TSNAP_COW_TARGET_RT !== '0' && this.prio.has(process.pid) && rtWatchReady();
    if (this.targetRaised) {
      for (let i = 0; i < tids.length && this.targetRaised; i++) {
        const c = this.target.classes[i];
        // A thread the watchdog cannot take: the guardian raises none (it raises all or none).
        if (c && (c.policy & ~SCHED_RESET_ON_FORK) !== SCHED_FIFO && !rtWatchAdd(tids[i], c)) this.targetRaised = false;
      }
      if (!this.targetRaised) for (const t of tids) rtWatchForget(t);
    }
    const listed = new Set(tids);
    return this.targetRaised ? (tid) => listed.has(tid) : false;
  }

  /**
   * The guardian gave the target's threads their class back at the
   * release, unless it died first: then what is still as the guardian left
   * it goes back to what it was before the freeze.
   */
  private targetBack(): void {
    const tg = this.target;
    if (!tg || !this.targetRaised) return;
    tg.tids.forEach((t, i) => {
      const was = tg.classes[i];
      const now = getSched(t);
      if (was && now && (was.policy & ~SCHED_RESET_ON_FORK) !== SCHED_FIFO && now.policy === (SCHED_FIFO | SCHED_RESET_ON_FORK) && now.priority === 1) setSched(t, was);
      rtWatchForget(t);
    });
  }

  /** Right before the release. */
  releasing(): void {
    this.tRelease = process.hrtime.bigint();
  }

  /** Right after the release, or on any failure: the class goes back. Safe more than once. */
  end(): void {
    if (this.result || !this.before.length) { this.prio.restore(); return; }
    this.targetBack();
    const releaseUs = this.tRelease ? Number(process.hrtime.bigint() - this.tRelease) / 1000 : 0;
    const waitUs = (i: number): number => {
      const a = this.before[i];
      const b = i < this.threads.length ? readSchedTimes(this.threads[i]) : null;
      return a && b ? Math.round((b.waitNs - a.waitNs) / 1000) : 0;
    };
    let targetNs = 0;
    const tg = this.target;
    tg?.tids.forEach((t, i) => {
      const a = tg.before[i];
      const b = readSchedTimes(tg.pid, t);
      if (a && b) targetNs += b.waitNs - a.waitNs;
    });
    const windowRt = this.prio.has(process.pid);
    this.prio.restore();
    const stall = windowRt ? rtStall() : null;
    this.result = { windowRt, targetRt: this.targetRaised, windowWaitUs: waitUs(0), guardianWaitUs: waitUs(1), targetWaitUs: Math.round(targetNs / 1000), releaseUs: Math.round(releaseUs), rtDroppedAfterMs: stall ? +stall.afterMs.toFixed(1) : null };
    mark(`cow window: rt ${this.result.windowRt} (target ${this.result.targetRt}), waited ${this.result.windowWaitUs} µs (guardian ${this.result.guardianWaitUs} µs, target ${this.result.targetWaitUs} µs), release ${this.result.releaseUs} µs${stall ? `; the watchdog gave the class back after ${stall.afterMs.toFixed(0)} ms` : ''}`);
  }

  get stats(): FrozenWindowStats | null {
    return this.result;
  }
}

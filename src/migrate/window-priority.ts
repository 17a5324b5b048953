/**
 * The real-time scheduling class for the threads that make up a
 * migration's downtime, for the downtime only.
 *
 * From the freeze to the process running on the receiver, the sender's
 * and the receiver's main threads (and the receiver's stopped process, in
 * which its remote syscalls run) do a chain of short steps, each a
 * wake-up. On a busy host the scheduler ran other tasks between them: at
 * load 5-12 on 2 cores the same 256 MiB migration's window took 97 to 540
 * ms, steps of 1 ms taking 40. A nice value does not help there: with
 * autogroups (the default) it orders the tasks of one session only, and
 * every other session's tasks share the CPU with ours as a whole.
 * SCHED_FIFO at its lowest priority runs before any normal task, and the
 * kernel still keeps 5% of each second for those (sched_rt_runtime_us).
 * Raised a little before the freeze (the sender at the start of its final
 * round, the receiver at the final ITER_BEGIN): what the process writes
 * while that round prepares is the last delta the window copies.
 * SCHED_RESET_ON_FORK: what a raised thread creates (a process, a thread)
 * starts in the normal class. Best effort: without CAP_SYS_NICE the thread
 * runs as it was. Each thread gets its own class back afterwards, and at
 * the latest when the window has lasted its bound (TSNAP_RT_BOUND_MS, 1 s):
 * the watchdog of sys/rt-watch.ts, which runs while these threads cannot
 * (under higher real-time priorities a FIFO 1 thread gets no CPU at all).
 * Once it has fired, nothing more is raised until the window is over.
 */
import { getSched, setSched, SCHED_FIFO, SCHED_RESET_ON_FORK, type SchedClass } from '../sys/sched.js';
import { Guardian } from '../sys/index.js';
import { rtWatchReady, rtWatchAdd, rtWatchForget } from '../sys/rt-watch.js';
import { listTasks } from '../proc/task.js';

/**
 * This process's main thread and, if it has one, its guardian (the tracer
 * through which the frozen task's remote syscalls go: each one waits for
 * the guardian to be scheduled as well).
 */
export function ownWindowThreads(): number[] {
  return Guardian.running && Guardian.get().pid > 0 ? [process.pid, Guardian.get().pid] : [process.pid];
}

const RAISED: SchedClass = { policy: SCHED_FIFO | SCHED_RESET_ON_FORK, priority: 1 };
/**
 * The class for a task spawned into it (restore's helper, by posix_spawn's
 * scheduler attribute, which takes no SCHED_RESET_ON_FORK): what it forks
 * is in it too, and must be adopt()ed.
 */
export const SPAWN_RAISED: Readonly<SchedClass> = { policy: SCHED_FIFO, priority: 1 };

/** As for a copy-on-write window (dump/frozen-window.ts): the first threads only, read before the freeze. */
const TARGET_THREADS_WATCHED = 64;

export class WindowPriority {
  private readonly saved = new Map<number, SchedClass>();
  /** Threads the guardian raises (its FREEZE) and puts back (its RELEASE): only on the watchdog's list here. */
  private readonly elsewhere = new Set<number>();

  /** Raises `tids` (the caller's main thread: its pid); returns this. */
  raise(tids: readonly number[]): this {
    for (const tid of tids) {
      if (this.saved.has(tid)) continue;
      const was = getSched(tid);
      if (!was || (was.policy & ~SCHED_RESET_ON_FORK) !== 0) continue; // gone, or already in a real-time class: left as it is
      this.raiseTo(tid, RAISED, was);
    }
    return this;
  }

  /** Raised only under the watchdog, registered before the raise: it may fire at any time after. */
  private raiseTo(tid: number, to: SchedClass, was: SchedClass): boolean {
    if (!rtWatchReady() || !rtWatchAdd(tid, was)) return false;
    if (setSched(tid, to) !== 0) { rtWatchForget(tid); return false; }
    this.saved.set(tid, was);
    return true;
  }

  /** `tid` has its class back: off the watchdog's list. */
  private putBack(tid: number, was: SchedClass): void {
    setSched(tid, was);
    rtWatchForget(tid);
  }

  /** Whether `tid` is raised (and will be put back). */
  has(tid: number): boolean {
    return this.saved.has(tid);
  }

  /**
   * `tid` (made by a raised task: restore's new process, the clone of a
   * helper spawned raised) raised, and put back to the class `like` had
   * before it was raised.
   */
  adopt(tid: number, like: number): void {
    const was = this.saved.get(like);
    if (!was || this.saved.has(tid)) return;
    this.raiseTo(tid, RAISED, was);
  }

  /**
   * Gives `tids` the class `from` had before it was raised: threads made
   * by a raised task start in the normal class, not necessarily its own.
   */
  restoreLike(tids: readonly number[], from: number): void {
    const was = this.saved.get(from);
    if (!was) return;
    this.saved.delete(from);
    for (const tid of tids) { this.saved.delete(tid); this.putBack(tid, was); }
    // Its own threads are in `tids`; should it not be, it still goes back (no longer listed, nothing else would).
    if (!tids.includes(from)) this.putBack(from, was);
  }

  /**
   * Whether what raised `tid` creates starts in its class too (on) or in
   * the normal class (off, as raise() leaves it). A task it creates while
   * on must be given its class back by restoreLike() or its own end.
   */
  inheritable(tid: number, on: boolean): void {
    // Not once the watchdog fired: that would raise it again.
    if (!this.saved.has(tid) || !rtWatchReady()) return;
    setSched(tid, on ? SPAWN_RAISED : RAISED);
  }

  /** Puts every raised thread but `keep` back (restore --lazy: the processes before they start, tsnap's thread once they run). */
  restoreAllBut(keep: number): void {
    for (const [tid, was] of this.saved) {
      if (tid === keep) continue;
      this.putBack(tid, was);
      this.saved.delete(tid);
    }
  }

  /**
   * Right before the guardian freezes `pid` into this window's class (its
   * FREEZE with raise): its threads go on the watchdog's list with their
   * own class, so that a stalled window gives them back too. Whether the
   * freeze should raise them: only with this process's main thread raised
   * (a target ahead of its tracer gains nothing) and the watchdog running.
   */
  watchRaisedElsewhere(pid: number): false | ((tid: number) => boolean) {
    if (!this.saved.has(process.pid) || !rtWatchReady()) return false;
    let tids: number[] = [];
    try { tids = listTasks(pid).slice(0, TARGET_THREADS_WATCHED); } catch { return false; }
    for (const tid of tids) {
      const was = getSched(tid);
      if (!was || (was.policy & ~SCHED_RESET_ON_FORK) !== 0 || this.elsewhere.has(tid)) continue;
      // A thread the watchdog cannot take: none is raised (the guardian raises all or none).
      if (!rtWatchAdd(tid, was)) { for (const t of this.elsewhere) rtWatchForget(t); this.elsewhere.clear(); return false; }
      this.elsewhere.add(tid);
    }
    // Only those listed: a thread past the first TARGET_THREADS_WATCHED (or made since) stays in its class.
    return (tid) => this.elsewhere.has(tid);
  }

  /** Puts every raised thread back; those the guardian raised are only taken off the watchdog's list (it puts them back). */
  restore(): void {
    for (const [tid, was] of this.saved) this.putBack(tid, was);
    this.saved.clear();
    for (const tid of this.elsewhere) rtWatchForget(tid);
    this.elsewhere.clear();
  }
}

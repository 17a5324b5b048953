/**
 * Holding every thread of a process stopped, and letting them all go.
 *
 * Threads are seized one by one, so a thread not yet stopped may create
 * another meanwhile: the thread list is read again after each pass until a
 * pass finds no new thread. Once every listed thread is stopped nothing in
 * the process can clone, so the last listing is complete.
 */
import { kill, ptrace, SIGKILL, WaitStatus, Guardian } from '../sys/index.js';
import { listTasks, readStat } from '../proc/index.js';
import { FrozenTask, type FreezeOptions } from './frozen-task.js';
import { TsnapError } from '../errors.js';
import { faultPoint } from '../fault-points.js';

export class FrozenProcess {
  /** The thread-group leader first, then the other threads in tid order. */
  readonly tasks: FrozenTask[];
  readonly freezeUs: number;
  readonly frozenAt: bigint;
  private released = false;

  private constructor(readonly pid: number, tasks: FrozenTask[], freezeUs: number) {
    this.tasks = tasks;
    this.freezeUs = freezeUs;
    this.frozenAt = process.hrtime.bigint();
  }

  get leader(): FrozenTask {
    return this.tasks[0];
  }

  static freeze(pid: number, opts: FreezeOptions = {}): FrozenProcess {
    const t0 = process.hrtime.bigint();
    const byTid = new Map<number, FrozenTask>();
    try {
      // The leader first: a failure to seize it is the error the user needs
      // to see (unknown pid, no permission, already traced).
      byTid.set(pid, FrozenTask.freeze(pid, opts));
      for (let pass = 0; ; pass++) {
        if (pass > 1000) throw new TsnapError('targetFailed', `process ${pid} keeps creating threads faster than they can be frozen; try again`);
        const fresh = listTasks(pid).filter((tid) => !byTid.has(tid));
        if (fresh.length === 0) break;
        for (const tid of fresh) {
          try {
            byTid.set(tid, FrozenTask.freeze(tid, opts));
          } catch (err) {
            // A thread that exited between the listing and the seize is simply gone.
            if (err instanceof TsnapError && err.kind === 'noSuchProcess' && threadGone(pid, tid)) continue;
            throw err;
          }
        }
      }
      const leader = byTid.get(pid)!;
      if (readStat(pid).state === 'Z') {
        throw new TsnapError('unsupported', `the main thread of process ${pid} has exited (only other threads run); such processes cannot be checkpointed`);
      }
      faultPoint('frozen');
      const others = [...byTid.values()].filter((t) => t !== leader).sort((a, b) => a.pid - b.pid);
      return new FrozenProcess(pid, [leader, ...others], Number(process.hrtime.bigint() - t0) / 1000);
    } catch (err) {
      for (const t of byTid.values()) {
        try { t.release(); } catch { /* gone */ }
      }
      throw err;
    }
  }

  frozenUs(): number {
    return Number(process.hrtime.bigint() - this.frozenAt) / 1000;
  }

  get isReleased(): boolean {
    return this.released;
  }

  /** Lets every thread run on as if never stopped. */
  release(): void {
    if (this.released) return;
    this.released = true;
    let first: unknown = null;
    for (const t of this.tasks) {
      try { t.release(); } catch (err) { first ??= err; }
    }
    if (first) throw first;
  }

  /** Ends the process and reaps our ptrace view of each of its threads. */
  kill(): void {
    if (this.released) return;
    this.released = true;
    // Threads we trace stay zombies until we reap them, and the leader is
    // reported only once the rest of its group is gone: reap it last.
    const order = [...this.tasks.slice(1), this.tasks[0]];
    if (this.leader.tracer === 'guarded') {
      for (const t of order) t.markReleased();
      Guardian.get().kill(this.pid, order.map((t) => t.pid));
      return;
    }
    try { kill(this.pid, SIGKILL); } catch { /* gone */ }
    for (const t of order) {
      t.markReleased();
      reapTraced(t.pid);
    }
  }
}

export function reapTraced(tid: number): void {
  try {
    for (;;) {
      const w = ptrace.waitpidBlocking(tid);
      if (WaitStatus.exited(w.status) || WaitStatus.signaled(w.status)) return;
    }
  } catch { /* ECHILD: already reaped */ }
}

function threadGone(pid: number, tid: number): boolean {
  try {
    readStat(pid);
  } catch {
    return false; // the whole process is gone: report that
  }
  return !listTasks(pid).includes(tid);
}

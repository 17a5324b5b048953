/**
 * A tracking holder's exit unregisters the whole tracked memory (17-36 ms
 * of kernel time for 256 MiB). A migration's final round signals it inside
 * the frozen window, and its exit then ran beside the round's last steps
 * and the receiver's restore, competing with them for the CPU. At the
 * lowest priority it takes only what is left; whoever must wait for its
 * end (a failed round letting the target go) puts it back first.
 */
import { setPriority } from 'node:os';

/** Lowest nice value for each task (on Linux, setpriority of a tid is per thread); a task gone already is skipped. */
export function teardownAtIdle(tids: readonly number[]): void {
  for (const tid of tids) {
    try { setPriority(tid, 19); } catch { /* gone */ }
  }
}

/** Back to the default nice value: something now waits for the task's end. */
export function teardownAtNormal(tids: readonly number[]): void {
  for (const tid of tids) {
    try { setPriority(tid, 0); } catch { /* gone */ }
  }
}

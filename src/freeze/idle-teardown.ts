/**
 * A killed source's address space is freed by the kernel in the dying
 * task itself (exit_mmap: tens of ms per GiB), and a tracking holder's
 * exit unregisters the whole tracked memory (17-36 ms for 256 MiB). Both
 * happen right when the receiver runs the last steps of the restore. On
 * one host (a receiver in its own namespaces, as the tests and the bench
 * run it, or a host receiving while it sends) they competed with those
 * steps for the CPU; at the lowest priority they take only what is left.
 * Nothing waits for them but tsnap's own reaping.
 */
import { setPriority } from 'node:os';

/** Lowest nice value for each task (on Linux, setpriority of a tid is per thread); a task gone already is skipped. */
export function teardownAtIdle(tids: readonly number[]): void {
  for (const tid of tids) {
    try { setPriority(tid, 19); } catch { /* gone */ }
  }
}

/** Back to the default nice value: something now waits for the task's end (a failure path). */
export function teardownAtNormal(tids: readonly number[]): void {
  for (const tid of tids) {
    try { setPriority(tid, 0); } catch { /* gone */ }
  }
}

/**
 * A source whose receiver built the process live is killed once the
 * receiver says the process runs (RESTORED or RESTORE_FAILED), not at
 * COMMITTED. Killing frees the source's whole address space in the kernel
 * (tens of ms per GiB, in the dying task), which on one host (a receiver in
 * its own namespaces, as the tests and the bench run it) competed for the
 * CPU with the receiver's last steps: the downtime. A live receiver never
 * waits for the source's pid (it was free there), so nothing is held up.
 *
 * The source stays frozen meanwhile, and from COMMITTED on the guardian is
 * told to kill it should tsnap die (KILL_ON_EXIT, as post-copy does): it is
 * never resumed. Whatever happens, it is killed: when the reply comes, when
 * the connection fails, or after KILL_AFTER_MS without a reply.
 */
import { Guardian } from '../sys/index.js';
import type { FrozenSet } from '../freeze/frozen-set.js';

/** A receiver that has not said how its restore went by then gets no more of the source's time. */
export const KILL_AFTER_MS = 5000;

export interface DeferredKill {
  /** `reply`, with the kill done early if it takes longer than KILL_AFTER_MS. */
  bounded<T>(reply: Promise<T>): Promise<T>;
  /** Kills the source (once). */
  kill(): void;
}

/** Null when some task is not held by the guardian (it could not be told to kill it): kill now instead. */
export function killAfterRestored(source: FrozenSet): DeferredKill | null {
  const tasks = source.processes.flatMap((p) => p.tasks);
  if (!tasks.every((t) => t.tracer === 'guarded')) return null;
  try {
    for (const t of tasks) Guardian.get().killOnExit(t.pid);
  } catch {
    return null;
  }
  let killed = false;
  const kill = () => {
    if (killed) return;
    killed = true;
    source.finish('kill');
  };
  return {
    kill,
    bounded: <T>(reply: Promise<T>) => {
      const timer = setTimeout(kill, KILL_AFTER_MS);
      return reply.finally(() => clearTimeout(timer));
    },
  };
}

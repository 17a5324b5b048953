/**
 * Last-resort release of frozen tasks. Catchable signals (SIGINT, SIGTERM,
 * SIGHUP) are turned into an abort that the dump notices between chunks and
 * unwinds normally; an uncaught exception still runs 'exit' handlers, where
 * every task not yet released is let go. Only SIGKILL of tsnap skips all of
 * this, and then the kernel detaches the tasks itself.
 */
/** A frozen task or process: anything that can be let go. */
export interface Releasable {
  release(): void;
}

const held = new Set<Releasable>();
let exitHookInstalled = false;

export function hold(task: Releasable): void {
  held.add(task);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', releaseAll);
  }
}

export function unhold(task: Releasable): void {
  held.delete(task);
}

function releaseAll(): void {
  for (const t of held) {
    try { t.release(); } catch { /* best effort while exiting */ }
  }
  held.clear();
}

const ABORT_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

let aborted: NodeJS.Signals | null = null;
let depth = 0;
const onSignal = (sig: NodeJS.Signals) => { aborted ??= sig; };

/**
 * While `fn` runs, the abort signals set a flag instead of killing tsnap.
 * `fn` checks it at safe points; the error it then throws carries the exit
 * status of the signal's default action (128 + signo). Scopes nest (a tree
 * dump runs a dump per process inside its own scope) and share one flag, so
 * a signal is never lost between an outer and an inner scope.
 */
export async function withAbortSignals<T>(fn: (check: () => void) => Promise<T>, onAbort: (sig: NodeJS.Signals) => Error): Promise<T> {
  if (depth++ === 0) {
    aborted = null;
    for (const s of ABORT_SIGNALS) process.on(s, onSignal);
  }
  try {
    return await fn(() => { if (aborted) throw onAbort(aborted); });
  } finally {
    if (--depth === 0) {
      for (const s of ABORT_SIGNALS) process.off(s, onSignal);
    }
  }
}

/**
 * Lets signal handlers run (they run from the event loop, not in the
 * middle of synchronous code) so that the next check sees a signal that
 * has already arrived. Used before a step that cannot be undone.
 */
export function letSignalsIn(): Promise<void> {
  // Two turns: called from a poll-phase callback (an I/O completion), one
  // setImmediate runs before the loop polls again, and so before libuv has
  // read the signal's wake-up; the second runs only after that poll.
  return new Promise((resolve) => setImmediate(() => setImmediate(resolve)));
}

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

/**
 * While `fn` runs, the abort signals set `aborted` instead of killing tsnap.
 * `fn` checks it at safe points; afterwards the signal's default action is
 * carried out by the caller (exit 128 + signo).
 */
export async function withAbortSignals<T>(fn: (check: () => void) => Promise<T>, onAbort: (sig: string) => Error): Promise<T> {
  let aborted: string | null = null;
  const handler = (sig: string) => { aborted ??= sig; };
  for (const s of ABORT_SIGNALS) process.on(s, handler);
  try {
    return await fn(() => { if (aborted) throw onAbort(aborted); });
  } finally {
    for (const s of ABORT_SIGNALS) process.off(s, handler);
  }
}

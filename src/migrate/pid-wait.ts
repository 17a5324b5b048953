/**
 * The receiver restores a migrated process under its own pid, which on
 * the same host is free only once the killed source has been reaped. That
 * wait is named, not silent: a zombie whose parent does not reap it (this
 * machine's init reaps orphans 1-2 s late; a buggy parent never does) or a
 * new process that took the pid is said with its comm and parent.
 */
import { readStat } from '../proc/index.js';

/** Who holds `pid` now, in words ("pid P is held by a zombie of "comm", parent Q ("init")"), or null when it is free. */
export function pidHolder(pid: number): string | null {
  let st;
  try { st = readStat(pid); } catch { return null; }
  let parent = `${st.ppid}`;
  try { parent += ` ("${readStat(st.ppid).comm}")`; } catch { /* the parent is gone too */ }
  const what = st.state === 'Z' || st.state === 'X' ? `a zombie of "${st.comm}"` : `"${st.comm}" (running)`;
  return `pid ${pid} is held by ${what}, parent ${parent}`;
}

export interface PidWait {
  /** Give up after this long (the restore then fails with the pid taken). Default 30 s. */
  timeoutMs?: number;
  /** Called once a pid has been held for `tellAfterMs` (default 100 ms), and again if its holder changes. */
  onHeld?: (pid: number, message: string) => void;
  tellAfterMs?: number;
}

/** Waits until none of `pids` exists, not even as a zombie, saying who holds one that stays taken. */
export async function waitPidsFree(pids: number[], opts: PidWait = {}): Promise<void> {
  const start = Date.now();
  const told = new Map<number, string>();
  const tellAfter = opts.tellAfterMs ?? 100;
  for (;;) {
    const held = pids.map((pid) => [pid, pidHolder(pid)] as const).filter(([, h]) => h !== null);
    if (held.length === 0) return;
    const waited = Date.now() - start;
    if (waited >= (opts.timeoutMs ?? 30_000)) return;
    if (waited >= tellAfter) {
      for (const [pid, h] of held) {
        if (told.get(pid) === h) continue;
        told.set(pid, h!);
        opts.onHeld?.(pid, h!);
      }
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

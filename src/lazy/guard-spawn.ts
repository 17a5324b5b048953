/**
 * Starting the lazy restore's guard (tsnap-lazyguard.c), and keeping one
 * started ahead for `tsnap serve`.
 *
 * posix_spawn() returns only once the child has exec'd (CLONE_VFORK), so
 * tsnap waits for the scheduler to run a new task: 0.2 ms on an idle
 * machine, 10-29 ms measured in a post-copy receiver's downtime on a loaded
 * one. A receiver knows it may restore lazily long before it does, so it
 * keeps a spare guard waiting for its "arm" line (keepSpareGuard()); the
 * lazy restore takes it and starts the next spare after the process runs.
 *
 * An unused spare holds nothing: it exits quietly at the end of its stdin
 * (its write end is tsnap's, closed at exec and exit), and tsnap reaps it.
 */
import { closeSync, openSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { O_CLOEXEC, pipe2, posixSpawnAsync, ptrace } from '../sys/index.js';
import { TsnapError } from '../errors.js';

export interface GuardProcess {
  pid: number;
  /** Write end of its stdin (the arm line, then "D"/"K"; its end without "D" is the pager's death). */
  w: number;
  /** Read end of its stdout, where it says "armed". */
  ack: number;
  /** Where it reports (2: tsnap's stderr; else an fd of tsnap's to close with it). */
  logFd: number;
}

const GUARD = fileURLToPath(new URL('../../native/tsnap-lazyguard', import.meta.url));

let spare: StartingGuard | null = null;
let keepSpare = false;

/** A guard on its way: its pipes are there at once, its pid once posix_spawn returned on the pool. */
export interface StartingGuard extends Omit<GuardProcess, 'pid'> {
  /** Rejects (a TsnapError) when it cannot be started; `w` and `ack` stay the caller's to close. */
  pid: Promise<number>;
}

/**
 * A guard reporting to `log` (default: tsnap's stderr): the spare when there
 * is one for it, else one started on libuv's pool (posixSpawnAsync): a
 * lazy restore needs it only at its arm step, and the spawn's wait for the
 * child's exec (0.2 ms idle, 3-30 ms on a loaded machine) overlaps the
 * restore instead of blocking it.
 */
export function takeGuard(log?: string): StartingGuard {
  if (!log && spare) {
    const g = spare;
    spare = null;
    return g;
  }
  const logFd = log ? openSync(log, 'a', 0o600) : 2;
  let pipes: { r: number; w: number; ackR: number; ackW: number };
  try {
    const [r, w] = pipe2(O_CLOEXEC);
    try {
      const [ackR, ackW] = pipe2(O_CLOEXEC);
      pipes = { r, w, ackR, ackW };
    } catch (err) {
      for (const fd of [r, w]) closeSync(fd);
      throw err;
    }
  } catch (err) {
    if (logFd !== 2) closeSync(logFd);
    throw err;
  }
  const { r, w, ackR, ackW } = pipes;
  const pid = posixSpawnAsync(GUARD, [], [r, ackW, logFd], true).then((p) => p, (err: unknown) => {
    throw new TsnapError('restoreFailed', `cannot start the lazy restore guard (${(err as Error).message}); run \`npm run build\` in the tsnap directory`);
  }).finally(() => {
    closeSync(r);
    closeSync(ackW);
  });
  // Whoever takes the guard handles a failure (arm()); this keeps an unawaited one from being "unhandled".
  pid.catch(() => { /* told at arm() */ });
  return { pid, w, ack: ackR, logFd };
}

/**
 * From now on one guard waits ahead (serve). Called again (after a lazy
 * restore's process runs), it replaces the one taken. A failure to start
 * one is not told here: the restore that needs a guard starts its own and
 * says why it cannot.
 */
export function keepSpareGuard(): void {
  keepSpare = true;
  if (spare) return;
  let g: StartingGuard;
  try { g = takeGuard(); } catch { return; }
  spare = g;
  // One that cannot start is no spare: the next restore starts its own and says why.
  g.pid.catch(() => {
    if (spare !== g) return;
    spare = null;
    for (const fd of [g.w, g.ack]) { try { closeSync(fd); } catch { /* closed */ } }
  });
}

/**
 * After a lazy restore's fill, off its critical path: the next spare, if
 * one is kept. Not earlier, and never on this thread: CLONE_VFORK holds
 * the spawning thread until the child's exec, and the child first closes
 * its copies of tsnap's fds. Right after a lazy restore's start those
 * include the VmFlags watch's perf counters, which tsnap is closing on
 * the pool at that moment; the child's close of a counter's last
 * reference (or its wait for the kernel's event_mutex behind those closes)
 * waits for RCU grace periods, 0.4-0.5 s measured here. Spawned from the
 * main thread at the start, that held the pager, and a post-copy process's
 * first fault went unanswered as long (docs/performance.md, session 26).
 */
export function refillSpareGuard(): void {
  if (!keepSpare || spare) return;
  setImmediate(() => { if (keepSpare && !spare) keepSpareGuard(); }).unref();
}

/** Lets the spare go (tests, a serve that stops): it ends at the end of its stdin. */
export function dropSpareGuard(): void {
  keepSpare = false;
  const g = spare;
  spare = null;
  if (!g) return;
  for (const fd of [g.w, g.ack]) { try { closeSync(fd); } catch { /* closed */ } }
  g.pid.then(reapGuardLater, () => { /* never started */ });
}

/**
 * The guard is tsnap's child (posix_spawn): reaped when it exits, should
 * tsnap live on (a library user); tsnap's own exit leaves it to init.
 */
export function reapGuardLater(pid: number): void {
  let tries = 0;
  const t = setInterval(() => {
    let done = ++tries > 600;
    try { if (ptrace.waitpidNoHang(pid)) done = true; } catch { done = true; }
    if (done) clearInterval(t);
  }, 50);
  t.unref();
}

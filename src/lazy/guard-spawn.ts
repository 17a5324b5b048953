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
import { O_CLOEXEC, pipe2, posixSpawn, ptrace } from '../sys/index.js';
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

let spare: GuardProcess | null = null;
let keepSpare = false;

function spawnGuard(logFd: number): GuardProcess {
  const [r, w] = pipe2(O_CLOEXEC);
  const [ackR, ackW] = pipe2(O_CLOEXEC);
  try {
    // In its own session: it must outlive tsnap, and no job control signal of tsnap's terminal should reach it.
    const pid = posixSpawn(GUARD, [], [r, ackW, logFd], true);
    return { pid, w, ack: ackR, logFd };
  } catch (err) {
    for (const fd of [w, ackR]) closeSync(fd);
    throw new TsnapError('restoreFailed', `cannot start the lazy restore guard (${(err as Error).message}); run \`npm run build\` in the tsnap directory`);
  } finally {
    closeSync(r);
    closeSync(ackW);
  }
}

/** A guard reporting to `log` (default: tsnap's stderr): the spare when there is one for it. */
export function takeGuard(log?: string): GuardProcess {
  if (!log && spare) {
    const g = spare;
    spare = null;
    return g;
  }
  const logFd = log ? openSync(log, 'a', 0o600) : 2;
  try {
    return spawnGuard(logFd);
  } catch (err) {
    if (logFd !== 2) closeSync(logFd);
    throw err;
  }
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
  try { spare = spawnGuard(2); } catch { spare = null; }
}

/** After a lazy restore's start, off its critical path: the next spare, if one is kept. */
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
  reapGuardLater(g.pid);
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

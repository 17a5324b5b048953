/**
 * The fd check before the freeze reads a table that may still change: a
 * thread of the target can close fd N, or close it and open another file
 * under the same number, between the listing of /proc/PID/fd and the reads
 * of one entry. Such an fd is not there any more and says nothing about
 * what the dump will meet: it is skipped, and the frozen read (the one
 * that counts, with every thread stopped) sees the table as it is.
 *
 * A refusal from a table that changed while it was made may be the
 * race's (a pipe half of which just went away): the table is read once
 * more, and a refusal the second read repeats word for word is the
 * target's (an fd restore cannot bring back stays, churn or not); any
 * other is left to the frozen read.
 */
import { existsSync } from 'node:fs';
import type { FdTarget } from '../proc/index.js';
import { SysError, Errno } from '../sys/errors.js';
import { readFdTarget } from '../proc/index.js';

/** Whether fd `fd` of `pid` is still the object `t` was read from (not closed, not a new file under the old number). */
export function stillOpen(pid: number, fd: number, t: FdTarget): boolean {
  let now: FdTarget;
  try {
    now = readFdTarget(pid, fd);
  } catch {
    return false;
  }
  return now.link === t.link && now.dev === t.dev && now.ino === t.ino;
}

/**
 * Reads one fd of a running process: null when it vanished (or was
 * replaced) while being read. An error about an fd that is still the same
 * is the fd's own and goes on.
 */
export function readUnlessGone<T>(pid: number, fd: number, read: (t: FdTarget) => T): T | null {
  let t: FdTarget;
  try {
    t = readFdTarget(pid, fd);
  } catch (err) {
    if (closedMeanwhile(pid, err)) return null;
    throw err;
  }
  try {
    return read(t);
  } catch (err) {
    // The same file opened again under the number (/dev/null) looks unchanged: the error tells.
    if (closedMeanwhile(pid, err) || !stillOpen(pid, fd, t)) return null;
    throw err;
  }
}

/**
 * ENOENT from /proc/PID/fd/N or fdinfo/N, EBADF from pidfd_getfd or kcmp,
 * while the process is still there: N was not open at that moment.
 */
function closedMeanwhile(pid: number, err: unknown): boolean {
  return err instanceof SysError && (err.errno === Errno.ENOENT || err.errno === Errno.EBADF) && existsSync(`/proc/${pid}`);
}

/**
 * Runs the checks across fds (pipes, pairs, shared files) and the
 * refusals over what was read: a refusal stands if every fd they looked at
 * is still the same; otherwise it is in flux, for readRunningTwice to
 * confirm. A failure to read an fd that is gone is no refusal at all.
 */
export function checkUnlessChanged(fds: { pid: number; t: FdTarget }[], check: () => void): void {
  try {
    check();
  } catch (err) {
    const pids = [...new Set(fds.map((s) => s.pid))];
    if (pids.some((pid) => closedMeanwhile(pid, err))) return;
    if (fds.every((s) => stillOpen(s.pid, s.t.fd, s.t))) throw err;
    throw new RefusalInFlux(err);
  }
}

/** A refusal made while the fds it looked at changed. */
class RefusalInFlux extends Error {
  constructor(readonly refusal: unknown) {
    super(refusal instanceof Error ? refusal.message : String(refusal));
  }
}

/**
 * The read before the freeze: a refusal in flux is confirmed by a second
 * read that makes it again, word for word; null when it is not (the frozen
 * read decides).
 */
export function readRunningTwice<T>(read: () => T): T | null {
  let first: RefusalInFlux;
  try {
    return read();
  } catch (err) {
    if (!(err instanceof RefusalInFlux)) throw err;
    first = err;
  }
  try {
    return read();
  } catch (err) {
    if (!(err instanceof RefusalInFlux)) throw err;
    if (err.message === first.message) throw err.refusal;
    return null;
  }
}

/**
 * Drops the fds that went away since they were read, so that the checks
 * across fds do not look for them; and the other ends of a pipe one end of
 * which went away (its other end is likely going too: a one-ended pipe
 * would be refused for the race's sake).
 */
export function withoutVanished<S extends { pid: number; t: FdTarget }>(fds: S[]): S[] {
  const gone = new Set(fds.filter((s) => !stillOpen(s.pid, s.t.fd, s.t)));
  const goingPipes = new Set([...gone].filter((s) => s.t.kind === 'pipe').map((s) => s.t.ino));
  return fds.filter((s) => !gone.has(s) && !(s.t.kind === 'pipe' && goingPipes.has(s.t.ino)));
}


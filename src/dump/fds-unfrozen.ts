/**
 * The fd check before the freeze reads a table that may still change: a
 * thread of the target can close fd N, or close it and open another file
 * under the same number, between the listing of /proc/PID/fd and the reads
 * of one entry. Such an fd is not there any more and says nothing about
 * what the dump will meet: it is skipped, and the frozen read (the one
 * that counts, with every thread stopped) sees the table as it is.
 *
 * A refusal is kept only for a table that held still while it was made:
 * a refusal from a changed table may be about a pipe or pair half of which
 * just went away, and is left to the frozen read.
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
 * Runs the checks across fds (pipes, pairs, shared files) over what was
 * read; a refusal counts only if every fd they looked at is still the
 * same, else it is dropped (the frozen read decides).
 */
export function checkUnlessChanged(fds: { pid: number; t: FdTarget }[], check: () => void): void {
  try {
    check();
  } catch (err) {
    const pids = [...new Set(fds.map((s) => s.pid))];
    if (pids.some((pid) => closedMeanwhile(pid, err))) return;
    if (fds.every((s) => stillOpen(s.pid, s.t.fd, s.t))) throw err;
  }
}

/** Drops the fds that went away since they were read, so that the checks across fds do not look for them. */
export function withoutVanished<S extends { pid: number; t: FdTarget }>(fds: S[]): S[] {
  return fds.filter((s) => stillOpen(s.pid, s.t.fd, s.t));
}


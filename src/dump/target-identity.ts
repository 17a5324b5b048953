/**
 * Which process a chain of rounds is of. A pid names a process only while
 * that process exists: once it has exited and been reaped, the kernel may
 * hand the pid to any new process (pid_max is 32768 here, and a busy host
 * goes round it in minutes). Rounds addressed by pid alone would then dump
 * (and, in kill mode, kill) a stranger into the chain.
 *
 * Within one tsnap run (dump --pre-dumps, migrate) the loop holds a pidfd
 * of the process from before its first round: a pidfd never comes to name
 * another process. Across runs (pre-dump, then dump --parent) the image
 * records the process's start time, which with the pid identifies it.
 */
import { closeSync } from 'node:fs';
import { pidfdOpen, pidfdExited } from '../sys/index.js';
import { readStat } from '../proc/index.js';
import { TsnapError } from '../errors.js';
import type { Inventory } from '../../formats/schema.js';

/**
 * A pidfd of `pid`, or null when there is no live process of that pid (none,
 * a thread, a zombie): the round's checkTarget then says which.
 */
export function openTargetPidfd(pid: number): number | null {
  if (!Number.isInteger(pid) || pid <= 0) return null;
  let fd: number;
  try { fd = pidfdOpen(pid); } catch { return null; }
  if (!pidfdExited(fd)) return fd;
  closeSync(fd);
  return null;
}

/** The refusal of a round whose process has ended since the loop's first round. */
export function endedSinceFirstRound(pid: number): TsnapError {
  return new TsnapError('noSuchProcess', `process ${pid} has exited since the first round of its chain; pid ${pid} may name another process now, which tsnap left alone; no image was written for this round: start a new chain`);
}

/**
 * Throws `gone` when the process behind `pidfd` has ended. Called where a
 * round is about to act on the pid (and once more after it has): while the
 * process has not ended (a zombie counts as ended, but still holds its
 * pid), its pid cannot have changed hands, so whatever was read or done by
 * pid before the check was of it.
 */
export function refuseIfEnded(pidfd: number | null | undefined, gone: () => TsnapError): void {
  if (pidfd !== null && pidfd !== undefined && pidfdExited(pidfd)) throw gone();
}

/** The start time an image records for its process (clock ticks after boot), or null for images older than the field. */
export function recordedStartTime(inv: Inventory): number | null {
  return inv.startTime ?? inv.tracking?.targetStartTime ?? null;
}

/** The start time of `pid` now, or null when there is no such process. */
export function startTimeOf(pid: number): number | null {
  try { return readStat(pid).startTime; } catch { return null; }
}

/** Whether `pid` is still the process `inv` is an image of (unknown counts as the same: the field is optional). */
export function isSameProcess(inv: Inventory, pid: number): boolean {
  const then = recordedStartTime(inv);
  const now = startTimeOf(pid);
  return then === null || now === null || inv.pid !== pid || then === now;
}

/**
 * A parent image (--parent) of the same pid but another process: that
 * process has exited and its pid was given to this one. Continuing its
 * chain would record a stranger as the same process, and a kill-mode dump
 * would kill it: refused, before anything is done to it.
 */
export function refuseOtherProcess(parentDir: string, inv: Inventory, pid: number): void {
  if (isSameProcess(inv, pid)) return;
  throw new TsnapError('noSuchProcess', `parent image ${parentDir} is of process ${pid} started at tick ${recordedStartTime(inv)}, which has exited: pid ${pid} is now another process (started at tick ${startTimeOf(pid)}), left alone; dump it without --parent to start a new chain`);
}

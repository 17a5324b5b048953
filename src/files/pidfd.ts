/**
 * pidfds (pidfd_open, clone3 CLONE_PIDFD). fdinfo names the process
 * ("Pid: N", -1 once it was reaped); stat gives the pidfs inode, one per
 * process, which is what programs compare to tell two pidfds apart.
 *
 * A pidfd of a process of the dump is opened again on its restored pid. A
 * pidfd of a process that is gone is made from a process tsnap starts and
 * reaps for it: each open file of the same dead process comes from one such
 * process, so they share an inode again, and different ones differ. A
 * pidfd of a live process outside the dump cannot be brought back and is
 * refused.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync } from 'node:fs';
import { SYS, O_NONBLOCK, O_EXCL, pidfdOpen } from '../sys/index.js';
import type { FdImage } from '../../formats/schema.js';
import type { FdInfo } from '../proc/fds.js';
import type { FdTarget } from '../proc/fds.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { placeFds } from './place.js';
import { TsnapError } from '../errors.js';
import { readStatus, readStat } from '../proc/index.js';

/** PIDFD_NONBLOCK is O_NONBLOCK, PIDFD_THREAD is O_EXCL: both stay in the file's flags. */
const PIDFD_FLAGS = O_NONBLOCK | O_EXCL;

export function isPidfd(t: FdTarget): boolean {
  return t.link === 'anon_inode:[pidfd]';
}

export function describePidfd(info: FdInfo, t: FdTarget): FdImage['pidfd'] {
  const v = info.extra.Pid;
  if (v === undefined || !/^-?\d+$/.test(v.trim())) {
    throw new TsnapError('kernel', `fd ${info.fd} is a pidfd but its fdinfo has no "Pid:" line; this kernel's format is not understood`);
  }
  const ns = (info.extra.NSpid ?? '').trim().split(/\s+/);
  // A process seen from a nested pid namespace would need that namespace back.
  if (ns.length > 1) throw new TsnapError('unsupported', `fd ${info.fd} is a pidfd of process ${v.trim()} in a nested pid namespace (NSpid ${ns.join(' ')}); tsnap restores pidfds of its own namespace only`);
  const target = Number(v.trim());
  // A thread other than a leader (PIDFD_THREAD) exists at restore only once the threads are made.
  const leader = target === -1 ? null : leaderOf(target);
  return { pid: target, ino: t.ino, ...(leader !== null && leader !== target ? { leader } : {}) };
}

/**
 * Refuses a pidfd restore could not point at the same process again.
 * `zombies`: exited children the (tree) image records; restore makes them
 * again before the files.
 */
export function checkPidfd(f: FdImage, pid: number, pids: number[], zombies: number[] = []): void {
  const { pid: target, leader } = f.pidfd!;
  if (target === -1 || pids.includes(target) || zombies.includes(target)) return;
  const of = pids.length > 1 ? ` of process ${pid}` : '';
  if (leader !== undefined) {
    if (pids.includes(leader)) return;
    throw new TsnapError('unsupported', `fd ${f.fd}${of} is a pidfd of thread ${target} of process ${leader}, which is not part of the dump; dump it too (--tree from a common parent) or close the pidfd`);
  }
  if (isZombie(target)) {
    throw new TsnapError('unsupported', `fd ${f.fd}${of} is a pidfd of process ${target}, which has exited and waits to be reaped; dump its parent with --tree to keep it, or reap it first`);
  }
  throw new TsnapError('unsupported', `fd ${f.fd}${of} is a pidfd of process ${target}, which is not part of the dump; dump it too (--tree from a common parent) or close the pidfd`);
}

function isZombie(pid: number): boolean {
  try { return readStat(pid).state === 'Z'; } catch { return false; }
}

function leaderOf(tid: number): number | null {
  try {
    return readStatus(tid).tgid;
  } catch {
    return null;
  }
}

/** Whether it names a thread that restore makes after the files (it is opened last). */
export function isThreadPidfd(f: FdImage): boolean {
  return f.pidfd?.leader !== undefined;
}

/** Opens the pidfd again inside the restored process, on `pidNow` (the target's pid, or tid, as restored). */
export function restorePidfd(rt: RemoteTask, group: FdImage[], floor: number, pidNow: number): void {
  const f = group[0];
  const tmp = Number(rt.sc.check(`pidfd_open(${pidNow})`, SYS.pidfd_open, pidNow, f.flags & PIDFD_FLAGS));
  placeFds(rt, [{ tmp, targets: group }], floor);
}

/**
 * pidfds of processes that are gone: for each dead process (pidfs inode) of
 * the image, one short-lived process, a pidfd of it per open file that
 * needs one, then its end and reaping. Returns tsnap's own fd of each open
 * file (by ofd), for the restored processes to take with pidfd_getfd.
 */
export async function makeDeadPidfds(fds: FdImage[]): Promise<Map<number, number>> {
  const byIno = new Map<number, FdImage[]>();
  const seenOfd = new Set<number>();
  for (const f of fds) {
    if (f.pidfd?.pid !== -1 || f.ofd === undefined || seenOfd.has(f.ofd)) continue;
    seenOfd.add(f.ofd);
    const l = byIno.get(f.pidfd.ino) ?? [];
    l.push(f);
    byIno.set(f.pidfd.ino, l);
  }
  const out = new Map<number, number>();
  try {
    for (const files of byIno.values()) {
      // Not a child of the restored processes: none of them must see it exit.
      // Node itself stands in where there is no sleep(1).
      let child = spawn('sleep', ['60'], { stdio: 'ignore' });
      if (child.pid === undefined) {
        child.on('error', () => { /* told below */ });
        child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1e6)'], { stdio: 'ignore' });
      }
      const exited = once(child, 'exit');
      try {
        if (child.pid === undefined) throw new TsnapError('restoreFailed', 'could not start a process to stand in for the dead process of a pidfd');
        for (const f of files) out.set(f.ofd!, pidfdOpen(child.pid, f.flags & PIDFD_FLAGS));
      } finally {
        child.kill('SIGKILL');
        // Reaped: the pidfds say "Pid: -1" as the originals did.
        await exited;
      }
    }
  } catch (err) {
    for (const fd of out.values()) closeSync(fd);
    throw err;
  }
  return out;
}

/** Restore's self-check: the restored pidfd names the process it should (null when it does). */
export function pidfdDiff(f: FdImage, info: FdInfo, idNow: (id: number) => number): string | null {
  if (!f.pidfd) return null;
  const want = f.pidfd.pid === -1 ? -1 : idNow(f.pidfd.pid);
  const have = Number((info.extra.Pid ?? '').trim());
  return have === want ? null : `fd ${f.fd} (pidfd) names process ${have}, the image's ${want}`;
}

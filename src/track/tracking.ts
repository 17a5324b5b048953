/**
 * Starting, finding and ending the dirty-page tracking of a process.
 *
 * A new tracking injects userfaultfd() into the target (a uffd binds the mm
 * of the process that creates it), takes a copy with pidfd_getfd(), closes
 * the target's own fd again, enables async write-protect on tsnap's copy and
 * hands a copy to a holder process (holder.ts). Nothing stays in the target
 * but the registrations.
 */
import { closeSync } from 'node:fs';
import { pidfdOpen, pidfdGetfd, SYS, O_CLOEXEC, O_NONBLOCK, UFFD_USER_MODE_ONLY, UFFD_FEATURE } from '../sys/index.js';
import { readStat, readAuxvRaw, parseAuxv } from '../proc/index.js';
import { FrozenTask } from '../freeze/frozen-task.js';
import { RemoteSyscaller } from '../inject/remote-syscall.js';
import { ProcMem } from '../sys/memory.js';
import { uffdApi } from './uffd.js';
import { startHolder, takeUffd, stopHolder, killHolder, type StartedHolder } from './holder.js';
import { findHolders } from './untrack.js';
import { readState, isCommitted, collectStaleStates } from './state.js';
import type { TrackingRef } from '../../formats/schema.js';
import { TsnapError } from '../errors.js';
import { faultPoint } from '../fault-points.js';

const AT_RANDOM = 25;

export interface Tracking {
  /** tsnap's own copy of the target's userfaultfd; close it when done. */
  uffd: number;
  ref: TrackingRef;
  /** Set when a parent's tracking could not be used: everything is copied again. */
  lost: string | null;
  fresh: boolean;
  /** Time the target was stopped to inject userfaultfd() (µs), 0 when reused. */
  frozenUs: number;
  /** A new holder's commit pipe (commitHolder() once an image names it), -1 when reused. */
  commitFd: number;
  /** Earlier trackings of the process that a new one ended (for a warning). */
  ended: string[];
}

export function mmIdentity(pid: number): string {
  const random = parseAuxv(readAuxvRaw(pid)).find((e) => e.type === AT_RANDOM);
  return random ? random.value.toString(16) : 'none';
}

/** Why a parent's tracking does not describe this process any more, or null. */
function staleReason(pid: number, ref: TrackingRef): string | null {
  if (ref.targetPid !== pid) return `it tracked pid ${ref.targetPid}, not ${pid}`;
  if (readStat(pid).startTime !== ref.targetStartTime) return `pid ${pid} now belongs to another process (start time changed)`;
  if (mmIdentity(pid) !== ref.mmId) return `process ${pid} exec'd a new program`;
  return null;
}

/**
 * The tracking to use for this round: the parent's when it is still valid,
 * else a new one (with the reason the old one was lost). `frozen`: a task
 * the caller already holds stopped (the final dump); otherwise the target
 * is stopped just for the injection. `stillTarget` throws when the process
 * the caller means has ended (its pid may be a stranger's): called once the
 * task is stopped, before anything is injected.
 */
export async function openTracking(pid: number, parent: TrackingRef | null, frozen: FrozenTask | null, stillTarget: () => void = () => {}): Promise<Tracking> {
  let lost: string | null = null;
  if (parent) {
    lost = staleReason(pid, parent);
    if (!lost) {
      const got = takeUffd(parent);
      if ('fd' in got) return { uffd: got.fd, ref: parent, lost: null, fresh: false, frozenUs: 0, commitFd: -1, ended: [] };
      lost = got.lost;
    }
    stopHolder(parent);
  }
  const ended = endEarlierTrackings(pid);
  const t0 = process.hrtime.bigint();
  const task = frozen ?? FrozenTask.freeze(pid);
  try {
    stillTarget();
  } catch (err) {
    if (!frozen) task.release();
    throw err;
  }
  // A first pre-dump's only freeze is this one (to inject the userfaultfd).
  if (!frozen) faultPoint('frozen');
  let targetFd = -1;
  const mem = new ProcMem(pid);
  let pidfd = -1;
  let uffd = -1;
  let token = 0n;
  const sc = new RemoteSyscaller(task, mem);
  try {
    // Should tsnap die before the close below, the guardian closes it.
    const made = sc.callLeaving(SYS.userfaultfd, [O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY], { nr: SYS.close, args: [0], resultSlot: 0 });
    const r = made.ret;
    token = made.token;
    if (r < 0n) {
      throw new TsnapError('kernel', `userfaultfd() in process ${pid} failed (errno ${-r}); dirty tracking needs CONFIG_USERFAULTFD`);
    }
    targetFd = Number(r);
    faultPoint('uffd-injected');
    pidfd = pidfdOpen(pid);
    uffd = pidfdGetfd(pidfd, targetFd);
    sc.checked('close(uffd)', sc.callUndoing(token, SYS.close, targetFd));
    targetFd = -1;
  } catch (err) {
    if (targetFd >= 0) {
      try { sc.callUndoing(token, SYS.close, targetFd); } catch { /* released below: the guardian closes it then */ }
    }
    if (uffd >= 0) closeSync(uffd);
    if (pidfd >= 0) closeSync(pidfd);
    throw err;
  } finally {
    mem.close();
    if (!frozen) task.release();
  }
  const frozenUs = frozen ? 0 : Number(process.hrtime.bigint() - t0) / 1000;
  let holder: StartedHolder | null = null;
  try {
    uffdApi(uffd, UFFD_FEATURE.WP_ASYNC | UFFD_FEATURE.WP_UNPOPULATED | UFFD_FEATURE.WP_HUGETLBFS_SHMEM);
    holder = await startHolder(pid, pidfd, uffd);
    const ref: TrackingRef = {
      holderPid: holder.pid, holderStartTime: holder.startTime,
      targetPid: pid, targetStartTime: readStat(pid).startTime, mmId: mmIdentity(pid),
    };
    return { uffd, ref, lost, fresh: true, frozenUs, commitFd: holder.commitFd, ended };
  } catch (err) {
    closeSync(uffd);
    // End of file on its commit pipe: the holder exits.
    if (holder) closeSync(holder.commitFd);
    throw err;
  } finally {
    closeSync(pidfd);
  }
}

/**
 * A new tracking ends every earlier one of the process. Written bits live
 * in the page tables, whatever uffd registered them: a second chain's scans
 * would clear what the first chain's next delta needs, and that delta would
 * miss writes. Ended, the first chain's next round finds its holder gone and
 * copies everything. Holders no committed image names (their tsnap died
 * before committing; the commit pipe normally ends them already) go
 * silently; the others are reported.
 */
function endEarlierTrackings(pid: number): string[] {
  collectStaleStates();
  const ended: string[] = [];
  for (const h of findHolders(pid)) {
    let startTime: number;
    try { startTime = readStat(h).startTime; } catch { continue; }
    const s = readState({ holderPid: h, holderStartTime: startTime, targetPid: pid });
    const uncommitted = s && !s.cleared && !(s.round && isCommitted(s.round));
    if (!uncommitted) ended.push(s?.cleared ? `holder ${h}, whose newest image is ${s.cleared.dir}` : `holder ${h}`);
    killHolder(h);
  }
  return ended;
}

export { stopHolder };

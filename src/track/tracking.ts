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
import { startHolder, takeUffd, stopHolder } from './holder.js';
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
 * is stopped just for the injection.
 */
export async function openTracking(pid: number, parent: TrackingRef | null, frozen: FrozenTask | null): Promise<Tracking> {
  let lost: string | null = null;
  if (parent) {
    lost = staleReason(pid, parent);
    if (!lost) {
      const got = takeUffd(parent);
      if ('fd' in got) return { uffd: got.fd, ref: parent, lost: null, fresh: false, frozenUs: 0 };
      lost = got.lost;
    }
    stopHolder(parent);
  }
  const t0 = process.hrtime.bigint();
  const task = frozen ?? FrozenTask.freeze(pid);
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
  try {
    uffdApi(uffd, UFFD_FEATURE.WP_ASYNC | UFFD_FEATURE.WP_UNPOPULATED | UFFD_FEATURE.WP_HUGETLBFS_SHMEM);
    const holder = await startHolder(pid, pidfd, uffd);
    const ref: TrackingRef = {
      holderPid: holder.pid, holderStartTime: holder.startTime,
      targetPid: pid, targetStartTime: readStat(pid).startTime, mmId: mmIdentity(pid),
    };
    return { uffd, ref, lost, fresh: true, frozenUs };
  } catch (err) {
    closeSync(uffd);
    throw err;
  } finally {
    closeSync(pidfd);
  }
}

export { stopHolder };

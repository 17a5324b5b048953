/**
 * A thread's scheduling class (sched_setscheduler(2)), for the few
 * threads a migration's downtime waits on (migrate/window-priority.ts).
 */
import { libc } from './libc.js';
import { SYS } from './uapi.js';

export const SCHED_OTHER = 0;
export const SCHED_FIFO = 1;
/** Threads and processes the task creates start in the normal class (and at nice >= 0). */
export const SCHED_RESET_ON_FORK = 0x40000000;

export interface SchedClass {
  /** With SCHED_RESET_ON_FORK when set. */
  policy: number;
  priority: number;
}

/** The class of thread `tid`, or null if it is gone or not ours to read. */
export function getSched(tid: number): SchedClass | null {
  const policy = Number(libc.syscall(SYS.sched_getscheduler, tid, 0, 0, 0, 0, 0));
  if (policy < 0) return null;
  const param = Buffer.alloc(4);
  if (Number(libc.syscall(SYS.sched_getparam, tid, libc.address(param), 0, 0, 0, 0)) < 0) return null;
  return { policy, priority: param.readInt32LE(0) };
}

/** Sets the class of `tid`; returns 0 or the errno (EPERM without CAP_SYS_NICE, ESRCH when gone). */
export function setSched(tid: number, c: SchedClass): number {
  const param = Buffer.alloc(4);
  param.writeInt32LE(c.priority, 0);
  return Number(libc.syscall(SYS.sched_setscheduler, tid, c.policy, libc.address(param), 0, 0, 0)) < 0 ? libc.errno() : 0;
}

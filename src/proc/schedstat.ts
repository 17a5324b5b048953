/**
 * /proc/PID/task/TID/schedstat: "run_ns wait_ns slices". The second field
 * is the time the thread was runnable but waited for a CPU, which tells a
 * step that waited on a loaded host from one that did more work.
 */
import { readFileSync } from 'node:fs';

export interface SchedTimes {
  /** Time on a CPU (ns). */
  runNs: number;
  /** Time runnable, waiting for a CPU (ns). */
  waitNs: number;
}

/** The thread's times, or null when it is gone (or schedstats are off). */
export function readSchedTimes(pid: number, tid: number = pid): SchedTimes | null {
  try {
    const [run, wait] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ');
    const runNs = Number(run);
    const waitNs = Number(wait);
    return Number.isFinite(runNs) && Number.isFinite(waitNs) ? { runNs, waitNs } : null;
  } catch {
    return null;
  }
}

/**
 * Processes no dump can take, named for what they are: a kernel thread
 * (ptrace refuses it whoever asks, so "run as root" would mislead) and a
 * zombie (it has exited; /proc keeps its pid but no state to read).
 */
import { readStat } from '../proc/index.js';
import { PF_KTHREAD } from '../proc/stat.js';
import { TsnapError } from '../errors.js';

/** Throws for a kernel thread or an exited process; a pid that is gone is left to the caller. */
export function refuseUndumpable(pid: number): void {
  let stat;
  try { stat = readStat(pid); } catch { return; }
  if (stat.flags & PF_KTHREAD) {
    throw new TsnapError('unsupported', `process ${pid} (${stat.comm}) is a kernel thread; tsnap dumps user processes only`);
  }
  if (stat.state === 'Z' || stat.state === 'X') {
    throw new TsnapError('noSuchProcess', `process ${pid} (${stat.comm}) has exited: it is a zombie waiting for its parent (pid ${stat.ppid}) to reap it; there is nothing left to dump`);
  }
}

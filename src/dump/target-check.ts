/**
 * Processes no dump can take, named for what they are: a kernel thread
 * (ptrace refuses it whoever asks, so "run as root" would mislead) and a
 * zombie (it has exited; /proc keeps its pid but no state to read).
 */
import { readStat, readStatus } from '../proc/index.js';
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

/** A process a dump may take: a live user process other than tsnap, by its process id (not a thread's). */
export function checkTarget(pid: number): void {
  if (!Number.isInteger(pid) || pid <= 0) throw new TsnapError('usage', `invalid pid ${pid}`);
  try {
    readStat(pid);
  } catch {
    throw new TsnapError('noSuchProcess', `no process with pid ${pid}; check the pid (ps -p ${pid})`);
  }
  if (pid === process.pid) throw new TsnapError('usage', 'tsnap cannot dump itself');
  refuseUndumpable(pid);
  const tgid = readStatus(pid).tgid;
  if (tgid !== pid) throw new TsnapError('usage', `${pid} is a thread of process ${tgid}; dump the process: tsnap dump --pid ${tgid}`);
}

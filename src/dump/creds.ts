/**
 * Credentials at dump: read per thread, and refused when restore could not
 * set them again (a capability tsnap lacks, a seccomp filter), so that a
 * process never comes back with more or less privilege than it had.
 */
import { SysError } from '../sys/index.js';
import { readTaskCreds, readUserNs, listTasks, type ProcCreds } from '../proc/index.js';
import { credsObstacle, credsImage, helperCreds } from '../restore/creds-check.js';
import { TsnapError } from '../errors.js';
import { seccompSuspendObstacle } from '../freeze/seccomp-suspend.js';
import type { CredsImage } from '../../formats/schema.js';

/**
 * Throws 'unsupported' naming the thread and what restore could not set.
 * `securebits` null: not known yet (the target runs); the check on the
 * frozen state covers them.
 */
export function refuseUnrestorable(pid: number, tid: number, c: ProcCreds, securebits: number | null, start = helperCreds()): void {
  const who = tid === pid ? `process ${pid}` : `thread ${tid} of process ${pid}`;
  // Filters are read and installed again with the task's seccomp suspended
  // (dump/seccomp.ts, restore/seccomp.ts). A tsnap that cannot suspend it
  // (under seccomp itself, or without CAP_SYS_ADMIN) gives the restored
  // process only its own filters, which the helper inherits.
  if (c.seccomp !== start.seccomp || c.seccompFilters !== start.seccompFilters) {
    const why = seccompSuspendObstacle();
    if (why) throw new TsnapError('unsupported', `${who} runs under seccomp (mode ${c.seccomp}, ${c.seccompFilters} filter(s)) and ${why}: tsnap cannot run its syscalls in it past the filters nor install them again at restore, so it is not dumped`);
  }
  const obstacle = credsObstacle(credsImage(c, securebits ?? start.securebits), start, 'tsnap');
  if (obstacle) throw new TsnapError('unsupported', `${who} ${obstacle}; restore could not set its credentials again, so it is not dumped`);
}

/** A zombie comes back only to be reaped: its ids and capabilities matter, not its seccomp filters. */
export function refuseUnrestorableZombie(pid: number, c: CredsImage): void {
  const obstacle = credsObstacle(c, { ...helperCreds(), securebits: 0 }, 'tsnap');
  if (obstacle) throw new TsnapError('unsupported', `exited process ${pid} ${obstacle}; restore could not set its credentials again, so it is not dumped`);
}

/**
 * Capabilities (and ids) inside another user namespace mean nothing in
 * tsnap's: restored there, a container's root would be the host's.
 */
export function refuseOtherUserNs(pid: number): void {
  const ns = readUserNs(pid);
  const own = readUserNs(process.pid);
  if (ns !== own) {
    throw new TsnapError('unsupported', `process ${pid} is in another user namespace (${ns}, tsnap is in ${own}); its ids and capabilities are relative to it and restore would give them in tsnap's, so it is not dumped (run tsnap inside that namespace)`);
  }
}

/** Every thread of a running process, before it is frozen: refuse early, touch nothing. */
export function checkCreds(pid: number): void {
  const start = helperCreds();
  let tids: number[];
  try {
    refuseOtherUserNs(pid);
    tids = listTasks(pid);
  } catch (err) {
    if (err instanceof SysError && err.code === 'ENOENT') return; // gone: the freeze says so
    throw err;
  }
  for (const tid of tids) {
    let c: ProcCreds;
    try { c = readTaskCreds(pid, tid); } catch { continue; } // a thread that just ended
    refuseUnrestorable(pid, tid, c, null, start);
  }
}

/**
 * A thread's seccomp filters at dump, as restore will install them again.
 * The filters are read with the task frozen and its seccomp suspended
 * (freeze/seccomp-suspend.ts), oldest first.
 */
import type { SeccompImage } from '../../formats/schema.js';
import { SECCOMP_MODE_FILTER, SECCOMP_RET_ACTION_FULL, SECCOMP_RET_USER_NOTIF, SOCK_FILTER_SIZE, type ptrace } from '../sys/index.js';
import { TsnapError } from '../errors.js';

const BPF_CLASS_MASK = 0x07;
const BPF_RET = 0x06;
const BPF_RVAL_MASK = 0x18;
const BPF_K = 0x00;

/**
 * Whether the program can return SECCOMP_RET_USER_NOTIF: its decisions go
 * to a listener fd (in this process or another) that restore cannot bring
 * back. A return of the accumulator could be anything; libseccomp and
 * hand-written filters return constants, and one returning A is taken as
 * able to notify.
 */
export function mayNotify(prog: Buffer): boolean {
  for (let o = 0; o + SOCK_FILTER_SIZE <= prog.length; o += SOCK_FILTER_SIZE) {
    const code = prog.readUInt16LE(o);
    if ((code & BPF_CLASS_MASK) !== BPF_RET) continue;
    if ((code & BPF_RVAL_MASK) !== BPF_K) return true;
    if (((prog.readUInt32LE(o + 4) & SECCOMP_RET_ACTION_FULL) >>> 0) === SECCOMP_RET_USER_NOTIF) return true;
  }
  return false;
}

/** The image of a thread in seccomp mode `mode` with `filters` (oldest first); throws on what restore cannot install. */
export function seccompImage(pid: number, tid: number, mode: number, filters: ptrace.SeccompFilter[]): SeccompImage {
  const who = tid === pid ? `process ${pid}` : `thread ${tid} of process ${pid}`;
  if (mode === SECCOMP_MODE_FILTER && filters.length === 0) {
    throw new TsnapError('unsupported', `${who} is in seccomp filter mode but the kernel listed no filter for it; not dumped`);
  }
  filters.forEach((f, i) => {
    if (mayNotify(f.prog)) {
      throw new TsnapError('unsupported', `${who} has a seccomp filter (${i + 1} of ${filters.length}) that can hand syscalls to a user-space listener (SECCOMP_RET_USER_NOTIF); restore cannot connect a listener again, so it is not dumped`);
    }
  });
  return { mode, filters: filters.map((f) => ({ prog: f.prog, flags: f.flags })) };
}

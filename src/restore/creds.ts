/**
 * Giving each restored thread its credentials: uids, gids, groups,
 * capabilities, securebits, no_new_privs. Linux keeps them per thread and
 * the raw syscalls change only the calling thread, so every thread sets its
 * own. This is the last step that needs privilege: afterwards the thread may
 * be an ordinary user's.
 */
import {
  SYS, PR, PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE, PR_SET_PDEATHSIG, PR_CAP_AMBIENT_RAISE, PR_CAP_AMBIENT_CLEAR_ALL,
  SECBIT_NO_SETUID_FIXUP, LINUX_CAPABILITY_VERSION_3,
} from '../sys/index.js';
import type { CredsImage, ProcessImage, ThreadImage } from '../../formats/schema.js';
import { readTaskCreds } from '../proc/creds.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { credsObstacle, capBits, sameCreds, credsImage } from './creds-check.js';
import { TsnapError } from '../errors.js';
import { installSeccomp } from './seccomp.js';

/** Scratch offset for the buffers of these syscalls: the other steps are done with it. */
const AT = 0;

/** The credentials the thread has now, as the image records them. */
export function currentCreds(rt: RemoteTask, tgid: number): CredsImage {
  const securebits = Number(rt.sc.check('prctl(PR_GET_SECUREBITS)', SYS.prctl, PR.GET_SECUREBITS, 0, 0, 0, 0));
  return credsImage(readTaskCreds(tgid, rt.pid), securebits);
}

function capset(rt: RemoteTask, eff: bigint, prm: bigint, inh: bigint): void {
  const b = Buffer.alloc(8 + 24);
  b.writeUInt32LE(LINUX_CAPABILITY_VERSION_3, 0);
  b.writeInt32LE(0, 4); // pid 0: the calling thread
  const lo = (m: bigint) => Number(m & 0xffffffffn);
  const hi = (m: bigint) => Number((m >> 32n) & 0xffffffffn);
  [lo(eff), lo(prm), lo(inh), hi(eff), hi(prm), hi(inh)].forEach((v, i) => b.writeUInt32LE(v, 8 + i * 4));
  const at = rt.put(b, AT);
  rt.sc.check('capset', SYS.capset, at, at + 8);
}

/**
 * Sets `want` in the thread behind `rt`. Order matters, since each step
 * needs privilege a later one gives up: with SECBIT_NO_SETUID_FIXUP the
 * uid changes keep every capability; the inheritable set is chosen while the
 * bounding set still allows it; ambient capabilities are raised while
 * permitted; the bounding set and securebits need CAP_SETPCAP; the final
 * capset drops what the thread must not have.
 */
export function restoreCreds(rt: RemoteTask, tgid: number, want: CredsImage): void {
  const start = currentCreds(rt, tgid);
  const obstacle = credsObstacle(want, start, 'the restoring tsnap');
  if (obstacle) throw new TsnapError('permission', `thread ${rt.pid} ${obstacle}; run tsnap restore with those privileges`);
  if (!sameCreds(want, start)) {
    const groups = Buffer.alloc(4 * Math.max(1, want.groups.length));
    want.groups.forEach((g, i) => groups.writeUInt32LE(g, i * 4));
    rt.sc.check(`setgroups(${want.groups.join(',')})`, SYS.setgroups, want.groups.length, rt.put(groups, AT));
    rt.sc.check('prctl(PR_SET_SECUREBITS, NO_SETUID_FIXUP)', SYS.prctl, PR.SET_SECUREBITS, start.securebits | SECBIT_NO_SETUID_FIXUP, 0, 0, 0);
    const [rg, eg, sg, fsg] = want.gid;
    const [ru, eu, su, fsu] = want.uid;
    rt.sc.check(`setresgid(${rg}, ${eg}, ${sg})`, SYS.setresgid, rg, eg, sg);
    rt.sc.call(SYS.setfsgid, fsg); // returns the old fsgid, never an error: verify() reads it back
    rt.sc.check(`setresuid(${ru}, ${eu}, ${su})`, SYS.setresuid, ru, eu, su);
    rt.sc.call(SYS.setfsuid, fsu);
    capset(rt, start.capEff, start.capPrm, want.capInh);
    rt.sc.check('prctl(PR_CAP_AMBIENT_CLEAR_ALL)', SYS.prctl, PR.CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    for (const cap of capBits(want.capAmb)) rt.sc.check(`prctl(PR_CAP_AMBIENT_RAISE, ${cap})`, SYS.prctl, PR.CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0);
    for (const cap of capBits(start.capBnd & ~want.capBnd)) rt.sc.check(`prctl(PR_CAPBSET_DROP, ${cap})`, SYS.prctl, PR.CAPBSET_DROP, cap, 0, 0, 0);
    rt.sc.check(`prctl(PR_SET_SECUREBITS, 0x${want.securebits.toString(16)})`, SYS.prctl, PR.SET_SECUREBITS, want.securebits, 0, 0, 0);
    capset(rt, want.capEff, want.capPrm, want.capInh);
  }
  if (want.noNewPrivs) rt.sc.check('prctl(PR_SET_NO_NEW_PRIVS)', SYS.prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  verify(rt, tgid, want);
}

/** Reads back what the kernel now holds: "exactly" is checked, not assumed. */
function verify(rt: RemoteTask, tgid: number, want: CredsImage): void {
  const got = currentCreds(rt, tgid);
  const show = (c: CredsImage) => `uid ${c.uid.join('/')} gid ${c.gid.join('/')} groups ${[...c.groups].sort((a, b) => a - b).join(',')} `
    + `caps eff ${c.capEff.toString(16)} prm ${c.capPrm.toString(16)} inh ${c.capInh.toString(16)} bnd ${c.capBnd.toString(16)} amb ${c.capAmb.toString(16)} `
    + `securebits 0x${c.securebits.toString(16)} no_new_privs ${c.noNewPrivs}`;
  if (show(got) !== show(want)) throw new TsnapError('restoreFailed', `thread ${rt.pid} got ${show(got)} instead of ${show(want)}`);
}

/**
 * Seccomp filters and credentials of every thread, then what a credential change resets in the
 * kernel (commit_creds): the mm's dumpable flag and the leader's parent-death
 * signal. Images without credentials (older tsnap) keep the helper's, as
 * before, with the process's no_new_privs in every thread.
 */
export function restoreAllCreds(leader: RemoteTask, p: ProcessImage, threads: { rt: RemoteTask; image: ThreadImage }[], warn: (msg: string) => void): void {
  // First, while the helper's CAP_SYS_ADMIN lets a thread without no_new_privs install them.
  installSeccomp(leader, threads);
  for (const th of threads) {
    if (th.image.creds) restoreCreds(th.rt, leader.pid, th.image.creds);
    else if (p.prctl.noNewPrivs) th.rt.sc.check('prctl(PR_SET_NO_NEW_PRIVS)', SYS.prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  }
  // 2 (SUID_DUMP_ROOT) comes only from the suid_dumpable sysctl, and prctl
  // takes 0 or 1: 0 protects the process from ptrace just as 2 does.
  if (p.prctl.dumpable === 2) warn(`process ${p.pid} was dumpable only by root (suid_dumpable 2); it comes back not dumpable (no core dumps)`);
  leader.sc.check('prctl(PR_SET_DUMPABLE)', SYS.prctl, PR_SET_DUMPABLE, p.prctl.dumpable === 1 ? 1 : 0);
  if (p.prctl.pdeathsig) leader.sc.check('prctl(PR_SET_PDEATHSIG)', SYS.prctl, PR_SET_PDEATHSIG, p.prctl.pdeathsig);
}

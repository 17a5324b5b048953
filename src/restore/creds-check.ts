/**
 * Which credentials restore can give a thread, decided before anything is
 * created, and at dump. Restore starts every thread with the credentials
 * tsnap's helper has (`start`) and can only ever lose privilege from there: a capability
 * the helper lacks cannot be given back. Dump asks the same question of
 * tsnap's own credentials, so that such a process is refused there.
 */
import { rawSyscall, SYS, PR } from '../sys/index.js';
import { readTaskCreds, type ProcCreds } from '../proc/creds.js';
import type { CredsImage } from '../../formats/schema.js';

/** Index = capability number, as capabilities(7) names them. */
export const CAP_NAMES: readonly string[] = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL',
  'CAP_SETGID', 'CAP_SETUID', 'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE', 'CAP_NET_BIND_SERVICE',
  'CAP_NET_BROADCAST', 'CAP_NET_ADMIN', 'CAP_NET_RAW', 'CAP_IPC_LOCK', 'CAP_IPC_OWNER', 'CAP_SYS_MODULE',
  'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE', 'CAP_SYS_PACCT', 'CAP_SYS_ADMIN', 'CAP_SYS_BOOT',
  'CAP_SYS_NICE', 'CAP_SYS_RESOURCE', 'CAP_SYS_TIME', 'CAP_SYS_TTY_CONFIG', 'CAP_MKNOD', 'CAP_LEASE',
  'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL', 'CAP_SETFCAP', 'CAP_MAC_OVERRIDE', 'CAP_MAC_ADMIN', 'CAP_SYSLOG',
  'CAP_WAKE_ALARM', 'CAP_BLOCK_SUSPEND', 'CAP_AUDIT_READ', 'CAP_PERFMON', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE',
];

export const CAP_SETGID = 6;
export const CAP_SETUID = 7;
export const CAP_SETPCAP = 8;
/** setgroups' list goes through the restore's one-page scratch area. */
export const MAX_GROUPS = 1024;

export function capName(n: number): string {
  return CAP_NAMES[n] ?? `capability ${n}`;
}

/** Capability numbers set in `mask`, lowest first. */
export function capBits(mask: bigint): number[] {
  const out: number[] = [];
  for (let i = 0; i < 64; i++) if ((mask >> BigInt(i)) & 1n) out.push(i);
  return out;
}

const has = (mask: bigint, cap: number) => ((mask >> BigInt(cap)) & 1n) === 1n;

/** Whether restore has anything to change: identical credentials need no privilege. */
export function sameCreds(a: CredsImage, b: CredsImage): boolean {
  const eq = (x: number[], y: number[]) => x.length === y.length && x.every((v, i) => v === y[i]);
  return eq(a.uid, b.uid) && eq(a.gid, b.gid) && eq([...a.groups].sort((x, y) => x - y), [...b.groups].sort((x, y) => x - y))
    && a.capInh === b.capInh && a.capPrm === b.capPrm && a.capEff === b.capEff && a.capBnd === b.capBnd
    && a.capAmb === b.capAmb && a.securebits === b.securebits;
}

/**
 * Why restore, starting from `start`, could not set `want` exactly, as a
 * phrase ("has CAP_X in its permitted set, which ..."), or null when it can.
 * `who` is what tsnap's side is called in the message ("tsnap").
 */
export function credsObstacle(want: CredsImage, start: CredsImage, who: string): string | null {
  if ((want.capEff & ~want.capPrm) !== 0n || (want.capAmb & ~(want.capPrm & want.capInh)) !== 0n) {
    return 'has capability sets the kernel never produces (effective or ambient outside permitted)';
  }
  if (sameCreds(want, start)) return null;
  if (want.groups.length > MAX_GROUPS) return `has ${want.groups.length} supplementary groups, more than the ${MAX_GROUPS} restore can set`;
  // Restore changes ids and bits with these, then drops them with the rest.
  for (const cap of [CAP_SETUID, CAP_SETGID, CAP_SETPCAP]) {
    if (!has(start.capEff, cap)) return `has other credentials than ${who}, which lacks ${capName(cap)} to set them`;
  }
  const missing = (mask: bigint, set: string): string | null => {
    const bits = capBits(mask);
    if (bits.length === 0) return null;
    return `has ${bits.map(capName).join(', ')} in its ${set} set, which ${who} itself lacks (a capability can only be dropped, never given back)`;
  };
  return missing(want.capPrm & ~start.capPrm, 'permitted')
    ?? missing(want.capBnd & ~start.capBnd, 'bounding')
    ?? missing(want.capInh & ~(start.capInh | start.capBnd), 'inheritable');
}

const SECBIT_NOROOT = 1 << 0;
const SECBIT_KEEP_CAPS = 1 << 4;

export function credsImage(c: ProcCreds, securebits: number): CredsImage {
  return {
    uid: c.uid, gid: c.gid, groups: c.groups,
    capInh: c.capInh, capPrm: c.capPrm, capEff: c.capEff, capBnd: c.capBnd, capAmb: c.capAmb,
    securebits, noNewPrivs: c.noNewPrivs,
  };
}

/**
 * The credentials a restore by this tsnap starts its threads with: those of
 * its helper, which tsnap executes (capabilities recomputed by execve, as
 * for any program without file capabilities).
 */
export function helperCreds(): CredsImage & { seccomp: number; seccompFilters: number } {
  const own = readTaskCreds(process.pid, process.pid);
  const securebits = rawSyscall('prctl(PR_GET_SECUREBITS)', SYS.prctl, PR.GET_SECUREBITS, 0, 0, 0, 0);
  const root = (own.uid[0] === 0 || own.uid[1] === 0) && !(securebits & SECBIT_NOROOT);
  const prm = root ? own.capBnd | own.capInh : own.capAmb;
  return {
    ...credsImage(own, securebits & ~SECBIT_KEEP_CAPS),
    capPrm: prm,
    capEff: root && own.uid[1] !== 0 ? 0n : prm,
    capAmb: root ? 0n : own.capAmb,
    seccomp: own.seccomp,
    seccompFilters: own.seccompFilters,
  };
}

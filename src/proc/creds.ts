/**
 * The credentials of one thread, from /proc/PID/task/TID/status. Linux keeps
 * credentials per thread (glibc only makes setuid look process-wide), so
 * each thread is read on its own. Securebits are not in status: the thread
 * itself must be asked (PR_GET_SECUREBITS).
 */
import { forEachKeyValue, readProcText, readProcLink } from './read.js';
import { hexToBigInt } from './num.js';

export interface ProcCreds {
  /** real, effective, saved, filesystem */
  uid: number[];
  gid: number[];
  /** Supplementary groups, as the kernel keeps them (sorted). */
  groups: number[];
  capInh: bigint;
  capPrm: bigint;
  capEff: bigint;
  capBnd: bigint;
  capAmb: bigint;
  noNewPrivs: number;
  /** 0 none, 1 strict, 2 filter. */
  seccomp: number;
  seccompFilters: number;
}

export function parseCreds(text: string): ProcCreds {
  const raw: Record<string, string> = {};
  forEachKeyValue(text, (key, value) => { raw[key] = value; });
  const get = (key: string): string => {
    const v = raw[key];
    if (v === undefined) throw new Error(`/proc/PID/status has no ${key}: line`);
    return v;
  };
  const ids = (key: string, n: number | null): number[] => {
    const out = get(key).split(/\s+/).filter((t) => t !== '').map(Number);
    if ((n !== null && out.length !== n) || out.some((x) => !Number.isInteger(x) || x < 0)) {
      throw new Error(`/proc/PID/status ${key}: is malformed: ${raw[key]}`);
    }
    return out;
  };
  const int = (key: string, dflt: number): number => {
    const v = raw[key];
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isInteger(n)) throw new Error(`/proc/PID/status ${key}: is not a number: ${v}`);
    return n;
  };
  return {
    uid: ids('Uid', 4),
    gid: ids('Gid', 4),
    groups: ids('Groups', null),
    capInh: hexToBigInt(get('CapInh')),
    capPrm: hexToBigInt(get('CapPrm')),
    capEff: hexToBigInt(get('CapEff')),
    capBnd: hexToBigInt(get('CapBnd')),
    // CapAmb (4.3+), NoNewPrivs (4.10+) and Seccomp_filters (5.9+) are newer than the rest.
    capAmb: raw.CapAmb === undefined ? 0n : hexToBigInt(raw.CapAmb),
    noNewPrivs: int('NoNewPrivs', 0),
    seccomp: int('Seccomp', 0),
    seccompFilters: int('Seccomp_filters', 0),
  };
}

export function readTaskCreds(pid: number, tid: number): ProcCreds {
  return parseCreds(readProcText(pid, `task/${tid}/status`));
}

/**
 * The user namespace ("user:[INODE]"): ids and capabilities in status are
 * relative to it. The kernel refuses setns/unshare of a user namespace to
 * a multi-threaded process, so it is one per process.
 */
export function readUserNs(pid: number): string {
  return readProcLink(pid, 'ns/user');
}

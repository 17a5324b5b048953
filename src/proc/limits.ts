/** /proc/PID/limits: resource limits, readable without ptrace or prlimit permission games. */
import { readProcText } from './read.js';

/** Index = RLIMIT_* resource number; value = the row label the kernel prints. */
export const RLIMIT_NAMES: readonly string[] = [
  'Max cpu time', // 0 RLIMIT_CPU
  'Max file size', // 1 RLIMIT_FSIZE
  'Max data size', // 2 RLIMIT_DATA
  'Max stack size', // 3 RLIMIT_STACK
  'Max core file size', // 4 RLIMIT_CORE
  'Max resident set', // 5 RLIMIT_RSS
  'Max processes', // 6 RLIMIT_NPROC
  'Max open files', // 7 RLIMIT_NOFILE
  'Max locked memory', // 8 RLIMIT_MEMLOCK
  'Max address space', // 9 RLIMIT_AS
  'Max file locks', // 10 RLIMIT_LOCKS
  'Max pending signals', // 11 RLIMIT_SIGPENDING
  'Max msgqueue size', // 12 RLIMIT_MSGQUEUE
  'Max nice priority', // 13 RLIMIT_NICE
  'Max realtime priority', // 14 RLIMIT_RTPRIO
  'Max realtime timeout', // 15 RLIMIT_RTTIME
];

/** RLIM_INFINITY as setrlimit/prlimit64 take it. */
export const RLIM_INFINITY = 2n ** 64n - 1n;

export interface Rlimit {
  resource: number;
  name: string;
  soft: bigint;
  hard: bigint;
}

function limitValue(s: string, line: string): bigint {
  if (s === 'unlimited') return RLIM_INFINITY;
  if (!/^[0-9]+$/.test(s)) throw new Error(`malformed /proc/PID/limits line: ${line}`);
  return BigInt(s);
}

/**
 * Rows are matched by label, not position, so an unknown row from a newer
 * kernel is skipped instead of shifting every resource number. Labels contain
 * spaces but no digits and never the word "unlimited", so what follows the
 * label is "soft hard [units]".
 */
export function parseLimits(text: string): Rlimit[] {
  const out: Rlimit[] = [];
  for (const line of text.split('\n')) {
    const resource = RLIMIT_NAMES.findIndex((n) => line.startsWith(n) && line.charCodeAt(n.length) === 32);
    if (resource < 0) continue;
    const name = RLIMIT_NAMES[resource];
    const fields = line.slice(name.length).trim().split(/ +/);
    if (fields.length < 2) throw new Error(`malformed /proc/PID/limits line: ${line}`);
    out.push({ resource, name, soft: limitValue(fields[0], line), hard: limitValue(fields[1], line) });
  }
  return out;
}

export function readLimits(pid: number): Rlimit[] {
  return parseLimits(readProcText(pid, 'limits'));
}

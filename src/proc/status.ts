/** /proc/PID/status: the human-readable summary, parsed for the fields stat lacks. */
import { forEachKeyValue, readProcText } from './read.js';
import { hexToBigInt } from './num.js';

export interface ProcStatus {
  name: string;
  umask: number;
  /** Single state letter as in stat ('R', 'S', 'T', 't', ...); raw.State has the description. */
  state: string;
  tgid: number;
  pid: number;
  ppid: number;
  tracerPid: number;
  /** real, effective, saved, filesystem */
  uid: number[];
  gid: number[];
  threads: number;
  /** Signal masks: bit (n - 1) is signal n. */
  sigPnd: bigint;
  shdPnd: bigint;
  sigBlk: bigint;
  sigIgn: bigint;
  sigCgt: bigint;
  capEff: bigint;
  /** Pid in each pid namespace, outermost (the reader's view) first. */
  nsPid: number[];
  raw: Record<string, string>;
}

const ESCAPES: Record<string, string> = { n: '\n', t: '\t', r: '\r', v: '\v', f: '\f', a: '\x07', e: '\x1b', '\\': '\\' };

/** Name is escaped (newline and backslash at least) so that each field stays on one line. */
function unescapeName(s: string): string {
  if (!s.includes('\\')) return s;
  return s.replace(/\\([ntrvfae\\]|[0-7]{3})/g, (_m, c: string) =>
    c.length === 3 ? String.fromCharCode(parseInt(c, 8)) : ESCAPES[c],
  );
}

function nums(s: string): number[] {
  return s.split(/\s+/).filter((t) => t !== '').map(Number);
}

export function parseStatus(text: string): ProcStatus {
  const raw: Record<string, string> = {};
  forEachKeyValue(text, (key, value) => { raw[key] = value; });
  const get = (key: string): string => {
    const v = raw[key];
    if (v === undefined) throw new Error(`/proc/PID/status has no ${key}: line`);
    return v;
  };
  const num = (key: string): number => {
    const v = Number(get(key));
    if (!Number.isFinite(v)) throw new Error(`/proc/PID/status ${key}: is not a number: ${raw[key]}`);
    return v;
  };
  const umask = get('Umask');
  if (!/^[0-7]+$/.test(umask)) throw new Error(`/proc/PID/status Umask: is not octal: ${umask}`);
  return {
    name: unescapeName(get('Name')),
    umask: parseInt(umask, 8),
    state: get('State').charAt(0),
    tgid: num('Tgid'),
    pid: num('Pid'),
    ppid: num('PPid'),
    tracerPid: num('TracerPid'),
    uid: nums(get('Uid')),
    gid: nums(get('Gid')),
    threads: num('Threads'),
    sigPnd: hexToBigInt(get('SigPnd')),
    shdPnd: hexToBigInt(get('ShdPnd')),
    sigBlk: hexToBigInt(get('SigBlk')),
    sigIgn: hexToBigInt(get('SigIgn')),
    sigCgt: hexToBigInt(get('SigCgt')),
    capEff: hexToBigInt(get('CapEff')),
    nsPid: nums(get('NSpid')),
    raw,
  };
}

export function readStatus(pid: number): ProcStatus {
  return parseStatus(readProcText(pid, 'status'));
}

/** /proc/PID/stat: the one-line summary, fields numbered as in proc(5). */
import { readProcText } from './read.js';

export interface ProcStat {
  pid: number;
  comm: string;
  state: string;
  ppid: number;
  pgrp: number;
  session: number;
  ttyNr: number;
  /** Foreground process group of the controlling terminal; -1 without one. */
  tpgid: number;
  flags: number;
  numThreads: number;
  /** Clock ticks (sysconf(_SC_CLK_TCK)) since boot; with pid it identifies a process across pid reuse. */
  startTime: number;
  vsize: number;
  /** Pages, not bytes. */
  rss: number;
  startCode: number;
  endCode: number;
  startStack: number;
  startData: number;
  endData: number;
  startBrk: number;
  argStart: number;
  argEnd: number;
  envStart: number;
  envEnd: number;
  exitCode: number;
}

/** PF_KTHREAD in `flags` (include/linux/sched.h): a kernel thread, which ptrace refuses whoever asks. */
export const PF_KTHREAD = 0x00200000;

/** exit_code, the last field used here, arrived in Linux 3.5. */
const LAST_FIELD = 52;

export function parseStat(text: string): ProcStat {
  // comm is whatever the process set with prctl(PR_SET_NAME) and may itself
  // contain ") (" or spaces; the kernel does not escape it, but nothing after
  // it can contain ')', so the last ')' is the only reliable delimiter.
  const open = text.indexOf(' (');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw new Error(`malformed /proc/PID/stat: ${JSON.stringify(text.slice(0, 80))}`);
  const rest = text.slice(close + 2).trimEnd().split(' ');
  // rest[0] is field 3 (state).
  if (rest.length < LAST_FIELD - 2) {
    throw new Error(`/proc/PID/stat has ${rest.length + 2} fields, need ${LAST_FIELD} (kernel >= 3.5)`);
  }
  const f = (n: number): number => {
    const v = Number(rest[n - 3]);
    if (!Number.isFinite(v)) throw new Error(`/proc/PID/stat field ${n} is not a number: ${rest[n - 3]}`);
    return v;
  };
  return {
    pid: Number(text.slice(0, open)),
    comm: text.slice(open + 2, close),
    state: rest[0],
    ppid: f(4),
    pgrp: f(5),
    session: f(6),
    ttyNr: f(7),
    tpgid: f(8),
    flags: f(9),
    numThreads: f(20),
    startTime: f(22),
    vsize: f(23),
    rss: f(24),
    startCode: f(26),
    endCode: f(27),
    startStack: f(28),
    startData: f(45),
    endData: f(46),
    startBrk: f(47),
    argStart: f(48),
    argEnd: f(49),
    envStart: f(50),
    envEnd: f(51),
    exitCode: f(52),
  };
}

export function readStat(pid: number): ProcStat {
  return parseStat(readProcText(pid, 'stat'));
}

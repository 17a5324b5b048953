/** /proc/PID/timers: the POSIX timers (timer_create) of a process. */
import { readProcText } from './read.js';

export interface PosixTimerInfo {
  id: number;
  signo: number;
  /** sigev_value (a pointer or an int, as the program gave it). */
  value: bigint;
  /** 'signal' (SIGEV_SIGNAL), 'thread' (SIGEV_THREAD_ID, also glibc's SIGEV_THREAD), 'none'. */
  notify: 'signal' | 'thread' | 'none';
  /** The thread a 'thread' timer signals. */
  tid: number;
  clockid: number;
}

export function parseTimers(text: string): PosixTimerInfo[] {
  const out: PosixTimerInfo[] = [];
  let cur: Partial<PosixTimerInfo> | null = null;
  for (const line of text.split('\n')) {
    const m = /^(\w+):\s*(.*)$/.exec(line.trim());
    if (!m) continue;
    const [, key, v] = m;
    if (key === 'ID') { cur = { id: Number(v) }; out.push(cur as PosixTimerInfo); continue; }
    if (!cur) continue;
    if (key === 'signal') {
      const [sig, val] = v.split('/');
      cur.signo = Number(sig);
      cur.value = BigInt(`0x${val}`);
    } else if (key === 'notify') {
      // "signal/tid.N" is SIGEV_THREAD_ID (the kernel prints the notify
      // type without that bit, then tid or pid); glibc's SIGEV_THREAD
      // timers are of this kind, aimed at its helper thread.
      const nm = /^(\w+)\/(pid|tid)\.(\d+)/.exec(v);
      cur.notify = nm?.[2] === 'tid' ? 'thread' : nm?.[1] === 'none' ? 'none' : 'signal';
      cur.tid = nm ? Number(nm[3]) : 0;
    } else if (key === 'ClockID') {
      cur.clockid = Number(v);
    }
  }
  return out;
}

export function readTimers(pid: number): PosixTimerInfo[] {
  try {
    return parseTimers(readProcText(pid, 'timers'));
  } catch {
    return []; // kernels without CONFIG_CHECKPOINT_RESTORE have no such file
  }
}

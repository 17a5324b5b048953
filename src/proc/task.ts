/** /proc/PID/task: the threads of a process. */
import { readProcNumericDir, readProcText } from './read.js';

/**
 * Sorted tids. The list is only stable while the process is stopped: threads
 * created or exiting during the readdir may be missed or reported dead.
 */
export function listTasks(pid: number): number[] {
  return readProcNumericDir(pid, 'task');
}

/**
 * Child processes of every thread of `pid` (/proc/PID/task/TID/children).
 * Stable only while the process is stopped.
 */
export function listChildren(pid: number): number[] {
  const out = new Set<number>();
  for (const tid of listTasks(pid)) {
    let text = '';
    try { text = readProcText(pid, `task/${tid}/children`); } catch { continue; } // thread ended
    for (const c of text.split(' ')) if (c.trim()) out.add(Number(c));
  }
  return [...out].sort((a, b) => a - b);
}

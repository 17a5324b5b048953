/** /proc/PID/task: the threads of a process. */
import { readProcNumericDir } from './read.js';

/**
 * Sorted tids. The list is only stable while the process is stopped: threads
 * created or exiting during the readdir may be missed or reported dead.
 */
export function listTasks(pid: number): number[] {
  return readProcNumericDir(pid, 'task');
}

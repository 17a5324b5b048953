/** Small per-process entries: magic links and single-value files. */
import { readProcBuffer, readProcLink, readProcText, splitDeleted } from './read.js';

/** Verbatim, so a ' (deleted)' suffix (cwd removed under the process) stays visible to the caller. */
export function readCwd(pid: number): string {
  return readProcLink(pid, 'cwd');
}

/** Path the executable was started from; ' (deleted)' is stripped because only the name is wanted. */
export function readExe(pid: number): string {
  return splitDeleted(readProcLink(pid, 'exe')).path;
}

export function readRoot(pid: number): string {
  return readProcLink(pid, 'root');
}

/** NUL-separated argv as the process's memory currently holds it (it may have rewritten it). */
export function readCmdline(pid: number): Buffer {
  return readProcBuffer(pid, 'cmdline');
}

/** NUL-separated environment block from the initial stack; later setenv() calls are not reflected. */
export function readEnviron(pid: number): Buffer {
  return readProcBuffer(pid, 'environ');
}

/**
 * Only the newline the kernel appends is removed: comm may legitimately end in
 * spaces, and those must survive a restore's PR_SET_NAME.
 */
export function readComm(pid: number): string {
  const s = readProcText(pid, 'comm');
  return s.endsWith('\n') ? s.slice(0, -1) : s;
}

export function readPersonality(pid: number): number {
  const s = readProcText(pid, 'personality').trim();
  const v = parseInt(s, 16);
  if (!/^[0-9a-fA-F]+$/.test(s) || Number.isNaN(v)) throw new Error(`malformed /proc/${pid}/personality: ${s}`);
  return v;
}

/** The cwd link of a process sitting in the /proc directory of one that has exited (ZDTM unhashed_proc). */
export const DEAD_PROC_DIR = /^\/proc\/\d+ \(deleted\)$/;

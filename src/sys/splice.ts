/**
 * splice(2) from one of tsnap's pipes into a file at an offset: what moves
 * a one-copy dump's page data (src/dump/splice-copy.ts) from the pipe the
 * target vmspliced its pages into, into the page cache of the pages file.
 * Synchronous on the main thread, like every call here.
 */
import { readFileSync } from 'node:fs';
import { libc } from './libc.js';
import { SysError } from './errors.js';
import { SYS, SPLICE_F_MOVE } from './uapi.js';

const offset = Buffer.alloc(8);

/**
 * Moves `len` bytes from pipe `pipeFd` into `fileFd` at `position`. The pipe
 * must hold them already: an empty pipe before the end is a bug of the
 * caller's (EIO), not a wait.
 */
export function spliceToFile(pipeFd: number, fileFd: number, position: number, len: number): void {
  const at = libc.address(offset);
  let done = 0;
  while (done < len) {
    offset.writeBigInt64LE(BigInt(position + done), 0);
    const r = Number(libc.syscall(SYS.splice, pipeFd, 0, fileFd, at, len - done, SPLICE_F_MOVE));
    if (r === -1) {
      const e = libc.errno();
      if (e === 4) continue; // EINTR
      throw new SysError(`splice(pipe -> file at ${position + done})`, e === 11 ? 5 : e, e === 11 ? 'the pipe ran dry' : undefined);
    }
    if (r === 0) throw new SysError(`splice(pipe -> file at ${position + done})`, 5, 'the pipe ran dry');
    done += r;
  }
}

/** /proc/sys/fs/pipe-max-size: the largest pipe an unprivileged F_SETPIPE_SZ gets (0: unreadable). */
export function pipeMaxSize(): number {
  try {
    return Number(readFileSync('/proc/sys/fs/pipe-max-size', 'utf8').trim()) || 0;
  } catch {
    return 0;
  }
}

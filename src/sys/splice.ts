/**
 * splice(2) from one of tsnap's pipes into a file at an offset: what moves
 * a one-copy dump's page data (src/dump/splice-copy.ts) from the pipe the
 * target vmspliced its pages into, into the page cache of the pages file.
 * Synchronous on the main thread, except splicePipesAsync (libuv's pool).
 */
import { readFileSync } from 'node:fs';
import { libc } from './libc.js';
import { SysError } from './errors.js';
import { SYS, SPLICE_F_MOVE } from './uapi.js';
import { nativeSplicePipes } from './crc32.js';

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

/** One pipe's share of a pooled splice: `len` bytes of pipe `pipe` into the file at `position`. */
export interface PipeSplice { pipe: number; position: number; len: number }

/** Whether splicePipesAsync can run here (the native library is built). */
export function canSplicePooled(): boolean {
  return nativeSplicePipes() !== null;
}

/**
 * Like spliceToFile for each of `jobs`, in order, into `fileFd`, on a
 * thread of libuv's pool (tsnap_splice_pipes): the caller's thread is free
 * meanwhile (to splice into another file). Resolves once all are in;
 * rejects with the first failure, as spliceToFile reports it. Every fd
 * must stay open until it settles.
 */
export function splicePipesAsync(fileFd: number, jobs: readonly PipeSplice[]): Promise<void> {
  const fn = nativeSplicePipes();
  if (!fn) return Promise.reject(new Error('splicePipesAsync: the native library is not built'));
  const n = jobs.length;
  const pipes = Buffer.alloc(4 * n);
  const positions = Buffer.alloc(8 * n);
  const lens = Buffer.alloc(8 * n);
  const done = Buffer.alloc(8 * n);
  jobs.forEach((j, i) => {
    pipes.writeInt32LE(j.pipe, 4 * i);
    positions.writeBigInt64LE(BigInt(j.position), 8 * i);
    lens.writeBigInt64LE(BigInt(j.len), 8 * i);
  });
  return new Promise((resolve, reject) => {
    fn.async(pipes, fileFd, positions, lens, n, done, (err, ret) => {
      if (err) { reject(err); return; }
      if (ret === 0) { resolve(); return; }
      const bad = jobs.findIndex((_, i) => done.readBigInt64LE(8 * i) < 0n);
      const e = bad >= 0 ? -Number(done.readBigInt64LE(8 * bad)) : 5;
      const at = bad >= 0 ? jobs[bad].position : 0;
      // An empty pipe before the end (EAGAIN: they are non-blocking) is the caller's bug, as in spliceToFile.
      reject(new SysError(`splice(pipe -> file at ${at})`, e === 11 ? 5 : e, e === 11 ? 'the pipe ran dry' : undefined));
    });
  });
}

/** /proc/sys/fs/pipe-max-size: the largest pipe an unprivileged F_SETPIPE_SZ gets (0: unreadable). */
export function pipeMaxSize(): number {
  try {
    return Number(readFileSync('/proc/sys/fs/pipe-max-size', 'utf8').trim()) || 0;
  } catch {
    return 0;
  }
}

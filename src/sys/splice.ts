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

/**
 * One pipe's share of a batch of splices: `len` bytes of pipe `pipe` into
 * the file at `position`; with `crc`, the CRC-32 of those bytes is read
 * back right after they are stored (still in the CPU's caches).
 */
export interface PipeSplice { pipe: number; position: number; len: number; crc?: boolean }

/** Whether splicePipes / splicePipesAsync can run here (the native library is built). */
export function canSplicePooled(): boolean {
  return nativeSplicePipes() !== null;
}

/** The arguments of one tsnap_splice_pipes call; `read` its results. */
function batch(jobs: readonly PipeSplice[], rfd: number, buf: Buffer | null) {
  const n = jobs.length;
  const pipes = Buffer.alloc(4 * n);
  const positions = Buffer.alloc(8 * n);
  const lens = Buffer.alloc(8 * n);
  const done = Buffer.alloc(8 * n);
  const anyCrc = jobs.some((j) => j.crc);
  if (anyCrc && (!buf || rfd < 0)) throw new RangeError('splicePipes: a CRC needs a read-back fd and buffer');
  const want = anyCrc ? Buffer.alloc(n) : null;
  const crcs = anyCrc ? Buffer.alloc(4 * n) : null;
  jobs.forEach((j, i) => {
    pipes.writeInt32LE(j.pipe, 4 * i);
    positions.writeBigInt64LE(BigInt(j.position), 8 * i);
    lens.writeBigInt64LE(BigInt(j.len), 8 * i);
    if (j.crc) want![i] = 1;
  });
  const args = [pipes, positions, lens, n, done, rfd, want, anyCrc ? crcs : null, anyCrc ? buf : null, anyCrc ? buf!.length : 0] as const;
  /** The CRCs asked for (null elsewhere), or the first failure, as spliceToFile reports it. */
  const read = (ret: number): (number | null)[] | SysError => {
    if (ret !== 0) {
      const bad = jobs.findIndex((_, i) => done.readBigInt64LE(8 * i) < 0n);
      const e = bad >= 0 ? -Number(done.readBigInt64LE(8 * bad)) : 5;
      // An empty pipe before the end (EAGAIN: they are non-blocking) is the caller's bug, as in spliceToFile.
      return new SysError(`splice(pipe -> file at ${bad >= 0 ? jobs[bad].position : 0})`, e === 11 ? 5 : e, e === 11 ? 'the pipe ran dry' : undefined);
    }
    return jobs.map((j, i) => (j.crc ? crcs!.readUInt32LE(4 * i) : null));
  };
  return { args, read };
}

/**
 * Like spliceToFile for each of `jobs`, in order, into `fileFd`, in one
 * native call on this thread; the CRCs asked for, in order (null for the
 * others), read back from `readFd` (the same file, open for reading)
 * through `buf`.
 */
export function splicePipes(fileFd: number, jobs: readonly PipeSplice[], readFd = -1, buf: Buffer | null = null): (number | null)[] {
  const fn = nativeSplicePipes();
  if (!fn) throw new Error('splicePipes: the native library is not built');
  const { args, read } = batch(jobs, readFd, buf);
  const [pipes, positions, lens, n, done, rfd, want, crcs, b, blen] = args;
  const r = read(fn(pipes, fileFd, positions, lens, n, done, rfd, want, crcs, b, blen));
  if (r instanceof SysError) throw r;
  return r;
}

/**
 * The same on a thread of libuv's pool: the caller's thread is free
 * meanwhile (to splice into another file). Every fd and `buf` must stay
 * untouched until it settles.
 */
export function splicePipesAsync(fileFd: number, jobs: readonly PipeSplice[], readFd = -1, buf: Buffer | null = null): Promise<(number | null)[]> {
  const fn = nativeSplicePipes();
  if (!fn) return Promise.reject(new Error('splicePipesAsync: the native library is not built'));
  const { args, read } = batch(jobs, readFd, buf);
  const [pipes, positions, lens, n, done, rfd, want, crcs, b, blen] = args;
  return new Promise((resolve, reject) => {
    fn.async(pipes, fileFd, positions, lens, n, done, rfd, want, crcs, b, blen, (err, ret) => {
      if (err) { reject(err); return; }
      const r = read(ret);
      if (r instanceof SysError) reject(r); else resolve(r);
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

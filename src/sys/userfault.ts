/**
 * userfaultfd MISSING mode, for lazy restore: the ioctls that fill a page
 * (COPY, ZEROPAGE) or wake a thread waiting on one, the event messages, and
 * a poll() that waits off the calling thread.
 *
 * Numbers checked on this kernel with a C probe against the uapi header
 * (sizeof uffdio_copy = 40, uffdio_zeropage = 32, uffd_msg = 32):
 * UFFDIO_COPY 0xC028AA03, UFFDIO_ZEROPAGE 0xC020AA04, UFFDIO_WAKE
 * 0x8010AA02. A COPY over a range whose first page is present fails with
 * EEXIST; one that meets a present page later copies what comes before and
 * fails with EAGAIN, `copy` holding the bytes done. While a fork, mremap or
 * munmap event is unread, COPY and ZEROPAGE fail with EAGAIN (the kernel's
 * mmap_changing): read the events first.
 */
import { libc } from './libc.js';
import { SysError } from './errors.js';
import { UFFD_API, UFFDIO_API, UFFDIO_REGISTER, UFFDIO_COPY, UFFDIO_ZEROPAGE, UFFDIO_WAKE, UFFDIO_REGISTER_MODE_MISSING, UFFD_MSG_SIZE } from './uapi.js';
import { decodeUffdMsgs, type UffdMsg } from './uffd-msg.js';

const EAGAIN = 11;
const EEXIST = 17;
const EINTR = 4;

const rawRead = libc.read;
const rawPoll = libc.poll;
const rawClose = libc.close;

/**
 * close() without Node's bookkeeping: a worker thread closing an fd the
 * main thread got (a uffd) would otherwise draw a warning.
 */
export function closeRaw(fd: number): void {
  rawClose(fd);
}

/** The answer of a fill ioctl: bytes placed, and why it stopped short (0: it did not). */
export interface FillAnswer {
  done: number;
  errno: number;
}

function fillIoctl(fd: number, request: number, b: Buffer, resultAt: number): FillAnswer {
  const r = libc.ioctl(fd, request, b);
  const result = Number(b.readBigInt64LE(resultAt));
  if (r === 0) return { done: result, errno: 0 };
  const errno = libc.errno();
  return { done: result > 0 ? result : 0, errno };
}

/** Copies `len` bytes of `src` (from `offset`) to `dst` in the uffd's mm, waking whoever waits there. */
export function uffdCopy(fd: number, dst: number, src: Buffer, offset: number, len: number): FillAnswer {
  const b = Buffer.alloc(40);
  b.writeBigUInt64LE(BigInt(dst), 0);
  b.writeBigUInt64LE(libc.address(src) + BigInt(offset), 8);
  b.writeBigUInt64LE(BigInt(len), 16);
  b.writeBigUInt64LE(0n, 24);
  return fillIoctl(fd, UFFDIO_COPY, b, 32);
}

/** Maps the zero page over [start, start+len). */
export function uffdZeropage(fd: number, start: number, len: number): FillAnswer {
  const b = Buffer.alloc(32);
  b.writeBigUInt64LE(BigInt(start), 0);
  b.writeBigUInt64LE(BigInt(len), 8);
  b.writeBigUInt64LE(0n, 16);
  return fillIoctl(fd, UFFDIO_ZEROPAGE, b, 24);
}

/** Wakes threads waiting on [start, start+len) (whose page is present already). */
export function uffdWake(fd: number, start: number, len: number): number {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(start), 0);
  b.writeBigUInt64LE(BigInt(len), 8);
  return libc.ioctl(fd, UFFDIO_WAKE, b) === 0 ? 0 : libc.errno();
}

/** UFFDIO_API; returns the features the kernel granted. Throws SysError. */
export function uffdApiMissing(fd: number, features: number): bigint {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(BigInt(UFFD_API), 0);
  b.writeBigUInt64LE(BigInt(features), 8);
  if (libc.ioctl(fd, UFFDIO_API, b) !== 0) throw new SysError('ioctl(UFFDIO_API)', libc.errno());
  return b.readBigUInt64LE(8);
}

/** Registers [start, start+len) for missing-page faults. Throws SysError (EINVAL: not anonymous memory; EBUSY: another uffd has it). */
export function uffdRegisterMissing(fd: number, start: number, len: number): void {
  const b = Buffer.alloc(32);
  b.writeBigUInt64LE(BigInt(start), 0);
  b.writeBigUInt64LE(BigInt(len), 8);
  b.writeBigUInt64LE(BigInt(UFFDIO_REGISTER_MODE_MISSING), 16);
  if (libc.ioctl(fd, UFFDIO_REGISTER, b) !== 0) throw new SysError(`ioctl(UFFDIO_REGISTER MISSING 0x${start.toString(16)}+${len})`, libc.errno());
}

/** Every message queued on a non-blocking uffd, without waiting. */
export function readUffdMsgs(fd: number, max = 64): UffdMsg[] {
  const b = Buffer.alloc(UFFD_MSG_SIZE * max);
  const n = Number(rawRead(fd, b, b.length));
  if (n < 0) {
    const e = libc.errno();
    if (e === EAGAIN) return [];
    throw new SysError('read(uffd)', e);
  }
  return decodeUffdMsgs(b, n);
}

export const POLLIN = 1;

/**
 * poll() on a libuv pool thread: resolves with each fd's revents. The
 * event loop goes on meanwhile (a pager serves a remote page source on it).
 */
export function pollAsync(fds: readonly number[], timeoutMs: number): Promise<number[]> {
  const b = Buffer.alloc(8 * fds.length);
  fds.forEach((fd, i) => { b.writeInt32LE(fd, i * 8); b.writeInt16LE(POLLIN, i * 8 + 4); });
  return new Promise((resolve, reject) => {
    rawPoll.async(b, fds.length, timeoutMs, (err: unknown, r: number) => {
      if (err) { reject(err); return; }
      if (r < 0) { resolve(fds.map(() => 0)); return; } // EINTR: the caller looks again
      resolve(fds.map((_, i) => b.readInt16LE(i * 8 + 6)));
    });
  });
}

/**
 * poll() on the calling thread, for a wait short enough not to need the
 * event loop. A signal (SIGCHLD of a traced task, the profiler's SIGPROF)
 * does not end it early: it polls again for the time left.
 */
export function pollWait(fds: readonly number[], timeoutMs: number): number[] {
  const b = Buffer.alloc(8 * fds.length);
  fds.forEach((fd, i) => { b.writeInt32LE(fd, i * 8); b.writeInt16LE(POLLIN, i * 8 + 4); });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = rawPoll(b, fds.length, Math.max(0, deadline - Date.now()));
    if (r >= 0) break;
    const e = libc.errno();
    if (e !== EINTR) throw new SysError('poll', e);
    if (Date.now() >= deadline) return fds.map(() => 0);
  }
  return fds.map((_, i) => b.readInt16LE(i * 8 + 6));
}

export { EAGAIN as UFFD_EAGAIN, EEXIST as UFFD_EEXIST };

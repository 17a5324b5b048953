/**
 * The userfaultfd surface of copy-on-write dumps (src/dump/cow-*.ts): the
 * synchronous write-protect mode, where a write to a protected page blocks
 * the writer until the page is unprotected, and the events that tell of
 * memory leaving under a running copy. Everything here is also callable
 * from a worker thread (koffi loads there too): the fault server lives in one.
 */
import { libc } from './libc.js';
import { SysError } from './errors.js';
import { SYS, UFFDIO_WRITEPROTECT, UFFDIO_UNREGISTER } from './uapi.js';

const POLLIN = 1;

/**
 * poll() on fds for input, blocking the calling thread up to timeoutMs
 * (-1: forever). Returns, per fd, whether it is readable (or hung up).
 */
export function pollIn(fds: readonly number[], timeoutMs: number): boolean[] {
  const b = Buffer.alloc(8 * fds.length);
  fds.forEach((fd, i) => { b.writeInt32LE(fd, i * 8); b.writeInt16LE(POLLIN, i * 8 + 4); });
  for (;;) {
    const r = Number(libc.syscall(SYS.poll, libc.address(b), fds.length, timeoutMs, 0, 0, 0));
    if (r >= 0) return fds.map((_, i) => b.readInt16LE(i * 8 + 6) !== 0);
    const e = libc.errno();
    if (e !== 4) throw new SysError('poll', e); // EINTR: again
  }
}

/** read() into buf; the byte count, or 0 when a non-blocking fd has nothing (EAGAIN). */
export function readSome(fd: number, buf: Buffer): number {
  for (;;) {
    const r = Number(libc.syscall(SYS.read, fd, libc.address(buf), buf.length, 0, 0, 0));
    if (r >= 0) return r;
    const e = libc.errno();
    if (e === 11) return 0;
    if (e !== 4) throw new SysError('read(userfaultfd)', e);
  }
}

/**
 * UFFDIO_WRITEPROTECT with one argument buffer reused, for the fault
 * server's hot path: returns 0 or the errno (ENOENT: no longer mapped)
 * instead of allocating and throwing.
 */
export class WriteProtector {
  private readonly arg = Buffer.alloc(24);
  constructor(private readonly uffd: number) {}

  set(start: number, len: number, wp: boolean): number {
    const b = this.arg;
    b.writeUInt32LE(start % 0x100000000, 0);
    b.writeUInt32LE(Math.floor(start / 0x100000000), 4);
    b.writeUInt32LE(len % 0x100000000, 8);
    b.writeUInt32LE(Math.floor(len / 0x100000000), 12);
    b.writeUInt32LE(wp ? 1 : 0, 16);
    b.writeUInt32LE(0, 20);
    return libc.ioctl(this.uffd, UFFDIO_WRITEPROTECT, b) === -1 ? libc.errno() : 0;
  }
}

/**
 * Gives the calling thread a higher CPU priority (nice -10) when allowed
 * (CAP_SYS_NICE): a thread of the target waits on each fault it serves.
 * Best effort: returns whether it worked.
 */
export function raiseThreadPriority(): boolean {
  const tid = Number(libc.syscall(SYS.gettid, 0, 0, 0, 0, 0, 0));
  // setpriority(PRIO_PROCESS, tid, -10): per thread on Linux.
  return Number(libc.syscall(141, 0, tid, BigInt.asUintN(64, -10n), 0, 0, 0)) === 0;
}

/** UFFDIO_UNREGISTER of [start, start+len): the range leaves that uffd (its write-protection with it). */
export function uffdUnregister(fd: number, start: number, len: number): void {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(start), 0);
  b.writeBigUInt64LE(BigInt(len), 8);
  if (libc.ioctl(fd, UFFDIO_UNREGISTER, b) === -1) throw new SysError(`ioctl(UFFDIO_UNREGISTER 0x${start.toString(16)}+${len})`, libc.errno());
}

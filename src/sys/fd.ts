/** pidfd, ioctl and raw syscalls: the remaining libc surface tsnap needs. */
import { libc } from './libc.js';
import { SysError } from './errors.js';
import { SYS, PR_SET_CHILD_SUBREAPER } from './uapi.js';

/** Raw syscall; throws SysError on -1. */
export function rawSyscall(name: string, nr: number, ...args: (number | bigint)[]): number {
  const a = [0, 0, 0, 0, 0, 0].map((z, i) => args[i] ?? z);
  const r = Number(libc.syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]));
  if (r === -1) throw new SysError(name, libc.errno());
  return r;
}

export function pidfdOpen(pid: number, flags = 0): number {
  return rawSyscall(`pidfd_open(${pid})`, SYS.pidfd_open, pid, flags);
}

/**
 * Whether the process behind `pidfd` has ended (a zombie at least: its
 * pidfd polls readable), waiting up to `timeoutMs`. Unlike a pid, a pidfd
 * never comes to name another process.
 */
export function pidfdExited(pidfd: number, timeoutMs = 0): boolean {
  const pfd = Buffer.alloc(8);
  pfd.writeInt32LE(pidfd, 0);
  pfd.writeInt16LE(1, 4); // POLLIN
  for (;;) {
    const r = libc.poll(pfd, 1, timeoutMs);
    if (r >= 0) return r > 0;
    const e = libc.errno();
    if (e !== 4) throw new SysError('poll(pidfd)', e); // EINTR: again
  }
}

/** Sends `sig` to the process behind `pidfd`; 0, or the errno (ESRCH: it has ended). */
export function pidfdSendSignal(pidfd: number, sig: number): number {
  return Number(libc.syscall(SYS.pidfd_send_signal, pidfd, sig, 0, 0, 0, 0)) === -1 ? libc.errno() : 0;
}

/** Duplicates file descriptor `targetFd` of the process behind `pidfd` into tsnap. */
export function pidfdGetfd(pidfd: number, targetFd: number): number {
  return rawSyscall(`pidfd_getfd(${targetFd})`, SYS.pidfd_getfd, pidfd, targetFd, 0);
}

export function ioctl(fd: number, request: number, arg: Buffer, name = `ioctl(0x${request.toString(16)})`): number {
  const r = libc.ioctl(fd, request, arg);
  if (r === -1) throw new SysError(name, libc.errno());
  return r;
}

/**
 * prctl(PR_SET_CHILD_SUBREAPER): a descendant orphaned below this process
 * (a daemonising child's child) becomes this process's child to reap, not
 * init's, so its pid is freed when this process waits for it.
 */
export function setChildSubreaper(on = true): void {
  rawSyscall('prctl(PR_SET_CHILD_SUBREAPER)', SYS.prctl, PR_SET_CHILD_SUBREAPER, on ? 1 : 0);
}

export function kill(pid: number, sig: number): void {
  if (libc.kill(pid, sig) === -1) throw new SysError(`kill(${pid}, ${sig})`, libc.errno());
}

/** prlimit64(pid, resource, NULL, &old): reads another process's limit. */
export function getRlimit(pid: number, resource: number): { cur: bigint; max: bigint } {
  const old = Buffer.alloc(16);
  rawSyscall(`prlimit64(${pid}, ${resource})`, SYS.prlimit64, pid, resource, 0, libc.address(old));
  return { cur: old.readBigUInt64LE(0), max: old.readBigUInt64LE(8) };
}

/** get_robust_list(pid): the futex robust list head a thread registered. */
export function getRobustList(tid: number): { head: bigint; len: bigint } {
  const head = Buffer.alloc(8);
  const len = Buffer.alloc(8);
  rawSyscall(`get_robust_list(${tid})`, SYS.get_robust_list, tid, libc.address(head), libc.address(len));
  return { head: head.readBigUInt64LE(0), len: len.readBigUInt64LE(0) };
}

/** prlimit64(pid, resource, &new, NULL): sets another process's limit. */
export function setRlimit(pid: number, resource: number, cur: bigint, max: bigint): void {
  const nw = Buffer.alloc(16);
  nw.writeBigUInt64LE(cur, 0);
  nw.writeBigUInt64LE(max, 8);
  rawSyscall(`prlimit64(${pid}, ${resource})`, SYS.prlimit64, pid, resource, libc.address(nw), 0);
}

/** Marks one of tsnap's own fds close-on-exec. */
export function setCloexec(fd: number): void {
  rawSyscall(`fcntl(${fd}, F_SETFD)`, SYS.fcntl, fd, 2, 1);
}

/** pidfd_get_task()'s name for the caller's own process (PIDFD_SELF_THREAD_GROUP, Linux 6.15+). */
export const PIDFD_SELF_THREAD_GROUP = -10001;
const MADV_DONTNEED = 4;

let selfDontneed: boolean | undefined;

/**
 * Whether process_madvise(PIDFD_SELF_THREAD_GROUP, ..., MADV_DONTNEED)
 * works here: advice on the caller's own mm is unrestricted since 6.13,
 * the sentinel exists since 6.15. Asked once, with an empty vector (the
 * kernel checks the pidfd and the advice before it walks any range).
 */
export function processMadviseSelfDontneed(): boolean {
  if (selfDontneed === undefined) {
    const r = Number(libc.syscall(SYS.process_madvise, BigInt.asUintN(64, BigInt(PIDFD_SELF_THREAD_GROUP)), 0, 0, MADV_DONTNEED, 0, 0));
    selfDontneed = r === 0;
  }
  return selfDontneed;
}

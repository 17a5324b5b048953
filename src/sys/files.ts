/**
 * Syscalls tsnap makes on its own copies of a target's files (taken with
 * pidfd_getfd or by opening /proc/PID/fd/N): pipes, fcntl, kcmp, sockets.
 */
import { libc } from './libc.js';
import { rawSyscall } from './fd.js';
import { SYS, SPLICE_F_NONBLOCK, KCMP_FILE, KCMP_EPOLL_TFD } from './uapi.js';
import { SysError } from './errors.js';

/** pipe2(flags): [read end, write end]. */
export function pipe2(flags: number): [number, number] {
  const fds = Buffer.alloc(8);
  rawSyscall('pipe2', SYS.pipe2, libc.address(fds), flags);
  return [fds.readInt32LE(0), fds.readInt32LE(4)];
}

/** tee(): duplicates up to `len` bytes from one pipe into another without consuming them. */
export function tee(fdIn: number, fdOut: number, len: number): number {
  try {
    return rawSyscall('tee', SYS.tee, fdIn, fdOut, len, SPLICE_F_NONBLOCK);
  } catch (err) {
    if (err instanceof SysError && err.code === 'EAGAIN') return 0; // empty
    throw err;
  }
}

export function fcntl(fd: number, cmd: number, arg: number | bigint = 0): number {
  return rawSyscall(`fcntl(${fd}, ${cmd})`, SYS.fcntl, fd, cmd, arg);
}

/** Whether fd1 of pid1 and fd2 of pid2 are the same open file description. */
export function sameFile(pid1: number, fd1: number, pid2: number, fd2: number): boolean {
  return rawSyscall('kcmp(KCMP_FILE)', SYS.kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) === 0;
}

/** Whether `fd` of pid is the file registered in its epoll `epfd` under number `tfd`. */
export function isEpollTarget(pid: number, fd: number, epfd: number, tfd: number): boolean {
  const slot = Buffer.alloc(12);
  slot.writeUInt32LE(epfd, 0);
  slot.writeUInt32LE(tfd, 4);
  slot.writeUInt32LE(0, 8);
  try {
    return rawSyscall('kcmp(KCMP_EPOLL_TFD)', SYS.kcmp, pid, pid, KCMP_EPOLL_TFD, fd, libc.address(slot)) === 0;
  } catch (err) {
    if (err instanceof SysError && err.code === 'ENOENT') return false;
    throw err;
  }
}

export function getsockoptInt(fd: number, level: number, opt: number): number {
  const v = Buffer.alloc(4);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(4);
  rawSyscall(`getsockopt(${fd}, ${level}, ${opt})`, SYS.getsockopt, fd, level, opt, libc.address(v), libc.address(len));
  return v.readInt32LE(0);
}

/** The socket's own address, as the raw sockaddr bytes. */
export function getsockname(fd: number): Buffer {
  const addr = Buffer.alloc(128);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(addr.length);
  rawSyscall(`getsockname(${fd})`, SYS.getsockname, fd, libc.address(addr), libc.address(len));
  return Buffer.from(addr.subarray(0, Math.min(len.readUInt32LE(0), addr.length)));
}

/** The connected peer's address, or null when not connected. */
export function getpeername(fd: number): Buffer | null {
  const addr = Buffer.alloc(128);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(addr.length);
  try {
    rawSyscall(`getpeername(${fd})`, SYS.getpeername, fd, libc.address(addr), libc.address(len));
  } catch (err) {
    if (err instanceof SysError && err.code === 'ENOTCONN') return null;
    throw err;
  }
  return Buffer.from(addr.subarray(0, Math.min(len.readUInt32LE(0), addr.length)));
}

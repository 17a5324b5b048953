/**
 * Syscalls tsnap makes on its own copies of a target's files (taken with
 * pidfd_getfd or by opening /proc/PID/fd/N): pipes, fcntl, kcmp, sockets.
 */
import { libc } from './libc.js';
import { rawSyscall } from './fd.js';
import { pollNow } from './socket-calls.js';
import { SYS, AT_FDCWD, SPLICE_F_NONBLOCK, KCMP_FILE, KCMP_FILES, KCMP_EPOLL_TFD, F_GETOWN_EX, F_GETSIG } from './uapi.js';
import { SysError, Errno } from './errors.js';

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

/**
 * poll() with no events asked and no wait: the revents the kernel always
 * reports (POLLHUP, POLLERR, POLLNVAL). Changes nothing about the file.
 */
export function pollHangup(fd: number): number {
  return pollNow(fd, 0);
}

/** mknodat(AT_FDCWD, path, S_IFIFO | mode): a named pipe (the umask applies). */
export function mkfifo(path: string, mode: number): void {
  const name = Buffer.from(`${path}\0`);
  rawSyscall(`mkfifo(${path})`, SYS.mknodat, AT_FDCWD, libc.address(name), 0o10000 | mode, 0);
}

export function fcntl(fd: number, cmd: number, arg: number | bigint = 0): number {
  return rawSyscall(`fcntl(${fd}, ${cmd})`, SYS.fcntl, fd, cmd, arg);
}

export const LOCK_EX = 2;
export const LOCK_NB = 4;

/**
 * flock(fd, op): true when the lock is taken, false when LOCK_NB found it
 * held (EWOULDBLOCK). The kernel drops it with the last fd of that open
 * file, however its process ends.
 */
export function flock(fd: number, op: number): boolean {
  try {
    rawSyscall(`flock(${fd})`, SYS.flock, fd, op);
    return true;
  } catch (err) {
    if (err instanceof SysError && err.code === 'EAGAIN') return false;
    throw err;
  }
}

/** F_GETOWN_EX + F_GETSIG of an open file: who gets its SIGIO/SIGURG, and which signal. */
export function fileOwner(fd: number): { type: number; pid: number; signal: number } {
  const ex = Buffer.alloc(8);
  rawSyscall(`fcntl(${fd}, F_GETOWN_EX)`, SYS.fcntl, fd, F_GETOWN_EX, libc.address(ex));
  return { type: ex.readInt32LE(0), pid: ex.readInt32LE(4), signal: fcntl(fd, F_GETSIG) };
}

/** Whether fd1 of pid1 and fd2 of pid2 are the same open file description. */
/** Whether two processes share one fd table (clone with CLONE_FILES, not a thread). */
export function sameFdTable(pid1: number, pid2: number): boolean {
  return rawSyscall('kcmp(KCMP_FILES)', SYS.kcmp, pid1, pid2, KCMP_FILES, 0, 0) === 0;
}

export function sameFile(pid1: number, fd1: number, pid2: number, fd2: number): boolean {
  return rawSyscall('kcmp(KCMP_FILE)', SYS.kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) === 0;
}

/**
 * Whether `fd` of pid is the file registered in the epoll `epfd` of
 * `epollPid` (pid itself by default) under number `tfd`; `toff` picks
 * among registrations of several files under the same number (the n-th in
 * fdinfo order).
 */
export function isEpollTarget(pid: number, fd: number, epfd: number, tfd: number, toff = 0, epollPid = pid): boolean {
  const slot = Buffer.alloc(12);
  slot.writeUInt32LE(epfd, 0);
  slot.writeUInt32LE(tfd, 4);
  slot.writeUInt32LE(toff, 8);
  try {
    return rawSyscall('kcmp(KCMP_EPOLL_TFD)', SYS.kcmp, pid, epollPid, KCMP_EPOLL_TFD, fd, libc.address(slot)) === 0;
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

const MSG_PEEK = 2;
const MSG_DONTWAIT = 0x40;
const SO_PEEK_OFF = 42;

const MSG_CTRUNC = 0x8;
const SIOCINQ = 0x541b;
const SYS_POLL = 7;
const POLLERR = 8;

/**
 * The data queued for reading on a socket, without consuming it: peeked
 * message by message with SO_PEEK_OFF (restored afterwards, as the socket
 * is the target's). One buffer per datagram; a stream comes as one.
 * `control`: some queued message also carries ancillary data (fds passed
 * with SCM_RIGHTS, credentials): peeked with no room for it, the kernel
 * says so with MSG_CTRUNC and installs nothing here.
 *
 * A read that finds the queue empty takes a pending socket error
 * (ECONNRESET of a closed peer) for its answer, and that clears it. So with
 * an error pending no such read is made: a stream is peeked up to the
 * bytes SIOCINQ counts; a datagram queue, whose message count nothing
 * tells, is not peeked at all (`unreadable` when it holds anything).
 */
export function peekQueued(fd: number, stream: boolean): { data: Buffer[]; control: boolean; unreadable?: boolean } {
  const pfd = Buffer.alloc(8);
  pfd.writeInt32LE(fd, 0);
  rawSyscall('poll', SYS_POLL, libc.address(pfd), 1, 0);
  const errorPending = (pfd.readInt16LE(6) & POLLERR) !== 0;
  const inq = errorPending ? ioctlInt(fd, SIOCINQ, 'ioctl(SIOCINQ)') : 0;
  if (errorPending && !stream) return { data: [], control: false, unreadable: inq > 0 };
  const old = Buffer.alloc(4);
  const olen = Buffer.alloc(4);
  olen.writeUInt32LE(4);
  rawSyscall('getsockopt(SO_PEEK_OFF)', SYS.getsockopt, fd, 1, SO_PEEK_OFF, libc.address(old), libc.address(olen));
  const setPeekOff = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    rawSyscall('setsockopt(SO_PEEK_OFF)', SYS.setsockopt, fd, 1, SO_PEEK_OFF, libc.address(b), 4);
  };
  setPeekOff(0);
  const out: Buffer[] = [];
  let control = false;
  try {
    const buf = Buffer.alloc(1 << 20);
    const iov = Buffer.alloc(16);
    iov.writeBigUInt64LE(libc.address(buf), 0);
    iov.writeBigUInt64LE(BigInt(buf.length), 8);
    const msg = Buffer.alloc(56); // struct msghdr: no name, one iovec, no control
    msg.writeBigUInt64LE(libc.address(iov), 16);
    msg.writeBigUInt64LE(1n, 24);
    for (let got = 0; ; ) {
      if (errorPending && got >= inq) break;
      msg.writeInt32LE(0, 48);
      const n = Number(libc.recvmsg(fd, msg, MSG_PEEK | MSG_DONTWAIT));
      if (n === -1) {
        const e = libc.errno();
        if (e === Errno.EAGAIN) break;
        throw new SysError('recvmsg(MSG_PEEK)', e);
      }
      if (msg.readInt32LE(48) & MSG_CTRUNC) control = true;
      if (n === 0) break; // end of a stream (a zero-length datagram is lost)
      out.push(Buffer.from(buf.subarray(0, n)));
      got += n;
    }
  } finally {
    setPeekOff(old.readInt32LE(0));
  }
  return { data: stream && out.length > 1 ? [Buffer.concat(out)] : out, control };
}

/** setsockopt with an int or a raw buffer value. */
export function setsockopt(fd: number, level: number, opt: number, value: number | Buffer, name = `setsockopt(${level}, ${opt})`): void {
  let b: Buffer;
  if (typeof value === 'number') { b = Buffer.alloc(4); b.writeInt32LE(value); } else b = value;
  rawSyscall(name, SYS.setsockopt, fd, level, opt, libc.address(b), b.length);
}

/** getsockopt into a buffer of `size` bytes; returns the bytes the kernel filled. */
export function getsockoptBuf(fd: number, level: number, opt: number, size: number): Buffer {
  const v = Buffer.alloc(size);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(size);
  rawSyscall(`getsockopt(${level}, ${opt})`, SYS.getsockopt, fd, level, opt, libc.address(v), libc.address(len));
  return v.subarray(0, Math.min(size, len.readUInt32LE(0)));
}

/** ioctl returning an int (SIOCINQ, SIOCOUTQ). */
export function ioctlInt(fd: number, request: number, name: string): number {
  const b = Buffer.alloc(4);
  if (libc.ioctl(fd, request, b) === -1) throw new SysError(name, libc.errno());
  return b.readInt32LE(0);
}

/** An ioctl without argument whose result is its return value (e.g. SIOCGSKNS: a new fd). */
export function ioctlRet(fd: number, request: number): number {
  return rawSyscall(`ioctl(0x${request.toString(16)})`, SYS.ioctl, fd, request, 0);
}

/** recv with MSG_PEEK|MSG_DONTWAIT of up to `len` bytes (no data: empty buffer). */
export function recvPeek(fd: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  try {
    const n = rawSyscall('recvfrom(MSG_PEEK)', SYS.recvfrom, fd, libc.address(b), len, 2 | 0x40, 0, 0);
    return b.subarray(0, n);
  } catch (err) {
    if (err instanceof SysError && err.code === 'EAGAIN') return Buffer.alloc(0);
    throw err;
  }
}

export function sendAll(fd: number, data: Buffer): void {
  for (let at = 0; at < data.length;) {
    // MSG_DONTWAIT: a buffer too small fails (EAGAIN) instead of blocking tsnap forever.
    at += rawSyscall('sendto', SYS.sendto, fd, libc.address(data) + BigInt(at), data.length - at, 0x40, 0, 0);
  }
}

/** One send of `n` bytes of `data` from `at`, with `flags`: the bytes taken. */
export function sendSome(fd: number, data: Buffer, at: number, n: number, flags: number): number {
  return rawSyscall('sendto', SYS.sendto, fd, libc.address(data) + BigInt(at), n, flags, 0, 0);
}

export function bindSocket(fd: number, addr: Buffer): void {
  rawSyscall('bind', SYS.bind, fd, libc.address(addr), addr.length);
}

export function connectSocket(fd: number, addr: Buffer): void {
  rawSyscall('connect', SYS.connect, fd, libc.address(addr), addr.length);
}

const SEEK_DATA = 3;
const SEEK_HOLE = 4;

/** The parts of [from, to) of a file that hold data (SEEK_DATA/SEEK_HOLE), in order. */
export function dataExtents(fd: number, from: number, to: number): { start: number; end: number }[] {
  const out: { start: number; end: number }[] = [];
  let pos = from;
  while (pos < to) {
    let start: number;
    try {
      start = rawSyscall('lseek(SEEK_DATA)', SYS.lseek, fd, pos, SEEK_DATA);
    } catch (err) {
      if (err instanceof SysError && err.errno === Errno.ENXIO) break; // only a hole is left
      throw err;
    }
    if (start >= to) break;
    const end = Math.min(to, rawSyscall('lseek(SEEK_HOLE)', SYS.lseek, fd, start, SEEK_HOLE));
    out.push({ start, end });
    pos = end;
  }
  return out;
}

const MSG_CMSG_CLOEXEC = 0x40000000;

/** A socket's SO_PEEK_OFF (-1: peeking always starts at the head of the queue). */
export function peekOffset(fd: number): number {
  return getsockoptInt(fd, 1, SO_PEEK_OFF);
}

export function setPeekOffset(fd: number, off: number): void {
  setsockopt(fd, 1, SO_PEEK_OFF, off, 'setsockopt(SO_PEEK_OFF)');
}

/**
 * One recvmsg(MSG_PEEK) of up to `len` bytes into `buf`, with `control` as
 * room for ancillary data: nothing is consumed, but files passed with
 * SCM_RIGHTS are installed in tsnap (close-on-exec) and must be closed by
 * the caller. null: the queue is empty.
 */
export function peekMessage(fd: number, buf: Buffer, len: number, control: Buffer): { n: number; flags: number; control: Buffer } | null {
  const iov = Buffer.alloc(16);
  iov.writeBigUInt64LE(libc.address(buf), 0);
  iov.writeBigUInt64LE(BigInt(Math.min(len, buf.length)), 8);
  const msg = Buffer.alloc(56); // struct msghdr
  msg.writeBigUInt64LE(libc.address(iov), 16);
  msg.writeBigUInt64LE(1n, 24);
  msg.writeBigUInt64LE(libc.address(control), 32);
  msg.writeBigUInt64LE(BigInt(control.length), 40);
  const n = Number(libc.recvmsg(fd, msg, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
  if (n === -1) {
    const e = libc.errno();
    if (e === Errno.EAGAIN) return null;
    throw new SysError('recvmsg(MSG_PEEK)', e);
  }
  const clen = Number(msg.readBigUInt64LE(40));
  return { n, flags: msg.readInt32LE(48), control: Buffer.from(control.subarray(0, clen)) };
}

/** sendmsg(MSG_DONTWAIT) of `data` with raw ancillary data; returns the bytes sent. */
export function sendMessage(fd: number, data: Buffer, control: Buffer): number {
  const body = data.length ? data : Buffer.alloc(1);
  const iov = Buffer.alloc(16);
  iov.writeBigUInt64LE(libc.address(body), 0);
  iov.writeBigUInt64LE(BigInt(data.length), 8);
  const msg = Buffer.alloc(56);
  msg.writeBigUInt64LE(libc.address(iov), 16);
  msg.writeBigUInt64LE(1n, 24);
  if (control.length) {
    msg.writeBigUInt64LE(libc.address(control), 32);
    msg.writeBigUInt64LE(BigInt(control.length), 40);
  }
  const n = Number(libc.sendmsg(fd, msg, MSG_DONTWAIT));
  if (n === -1) throw new SysError('sendmsg', libc.errno());
  return n;
}

/** The target of the symlink an O_PATH fd names (readlinkat with an empty path). */
export function readlinkFd(fd: number): string {
  const buf = Buffer.alloc(4096);
  const empty = Buffer.from('\0');
  const n = rawSyscall(`readlinkat(${fd})`, SYS.readlinkat, fd, libc.address(empty), libc.address(buf), buf.length);
  return buf.subarray(0, n).toString();
}

/**
 * open_by_handle_at(mountFd, handle, flags): the inode a file handle names,
 * opened (needs CAP_DAC_READ_SEARCH). `handle` is struct file_handle's
 * f_handle bytes.
 */
export function openByHandle(mountFd: number, type: number, handle: Buffer, flags: number): number {
  const fh = Buffer.alloc(8 + handle.length);
  fh.writeUInt32LE(handle.length, 0);
  fh.writeInt32LE(type, 4);
  handle.copy(fh, 8);
  return rawSyscall('open_by_handle_at', SYS.open_by_handle_at, mountFd, libc.address(fh), flags);
}

/**
 * name_to_handle_at(AT_FDCWD, path, ..., 0): the file handle of `path`
 * itself (a symlink is not followed), or null where the filesystem has none.
 */
export function fileHandle(path: string): { type: number; handle: Buffer } | null {
  const MAX_HANDLE_SZ = 128;
  const fh = Buffer.alloc(8 + MAX_HANDLE_SZ);
  fh.writeUInt32LE(MAX_HANDLE_SZ, 0);
  const mountId = Buffer.alloc(4);
  const name = Buffer.from(`${path}\0`);
  try {
    rawSyscall(`name_to_handle_at(${path})`, SYS.name_to_handle_at, -100, libc.address(name), libc.address(fh), libc.address(mountId), 0);
  } catch (err) {
    if (err instanceof SysError && (err.code === 'EOPNOTSUPP' || err.code === 'ENOTSUP')) return null;
    throw err;
  }
  return { type: fh.readInt32LE(4), handle: Buffer.from(fh.subarray(8, 8 + fh.readUInt32LE(0))) };
}

/** memfd_create(name, flags): a new anonymous file of tsnap's. */
export function memfdCreate(name: string, flags: number): number {
  const n = Buffer.from(`${name}\0`);
  return rawSyscall('memfd_create', SYS.memfd_create, libc.address(n), flags);
}

const IPPROTO_RAW = 255;
const IP_HDRINCL = 3;
const SO_MARK = 36;

function csumAdd(sum: number, b: Buffer): number {
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length & 1) sum += b[b.length - 1] << 8;
  return sum;
}

function csumFold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/**
 * Sends one TCP segment without payload from `src` to `dst` (raw sockaddrs
 * of one family; v4-mapped IPv6 addresses go as IPv4) through a raw socket
 * whose packets carry `mark`. Used to replay a segment the peer once sent.
 */
export function sendRawTcp(src: { ip: Buffer; port: number }, dst: { ip: Buffer; port: number }, seq: number, ack: number, flags: number, window: number, mark: number): void {
  const v6 = src.ip.length === 16;
  const tcp = Buffer.alloc(20);
  tcp.writeUInt16BE(src.port, 0);
  tcp.writeUInt16BE(dst.port, 2);
  tcp.writeUInt32BE(seq >>> 0, 4);
  tcp.writeUInt32BE(ack >>> 0, 8);
  tcp.writeUInt8(5 << 4, 12);
  tcp.writeUInt8(flags, 13);
  tcp.writeUInt16BE(Math.min(window, 0xffff), 14);
  const pseudo = Buffer.alloc(v6 ? 40 : 12);
  if (v6) {
    src.ip.copy(pseudo, 0); dst.ip.copy(pseudo, 16);
    pseudo.writeUInt32BE(20, 32); pseudo.writeUInt8(6, 39);
  } else {
    src.ip.copy(pseudo, 0); dst.ip.copy(pseudo, 4);
    pseudo.writeUInt8(6, 9); pseudo.writeUInt16BE(20, 10);
  }
  tcp.writeUInt16BE(csumFold(csumAdd(csumAdd(0, pseudo), tcp)), 16);
  let pkt: Buffer;
  if (v6) {
    const ip = Buffer.alloc(40);
    ip.writeUInt32BE(0x60000000, 0);
    ip.writeUInt16BE(20, 4);
    ip.writeUInt8(6, 6);
    ip.writeUInt8(64, 7);
    src.ip.copy(ip, 8); dst.ip.copy(ip, 24);
    pkt = Buffer.concat([ip, tcp]);
  } else {
    const ip = Buffer.alloc(20);
    ip.writeUInt8(0x45, 0);
    ip.writeUInt16BE(40, 2);
    ip.writeUInt8(64, 8);
    ip.writeUInt8(6, 9);
    src.ip.copy(ip, 12); dst.ip.copy(ip, 16);
    ip.writeUInt16BE(csumFold(csumAdd(0, ip)), 10);
    pkt = Buffer.concat([ip, tcp]);
  }
  const family = v6 ? 10 : 2;
  const s = rawSyscall('socket(raw)', SYS.socket, family, 3 /* SOCK_RAW */ | 0o2000000, IPPROTO_RAW);
  try {
    const one = Buffer.alloc(4); one.writeInt32LE(1);
    if (!v6) rawSyscall('setsockopt(IP_HDRINCL)', SYS.setsockopt, s, 0, IP_HDRINCL, libc.address(one), 4);
    const m = Buffer.alloc(4); m.writeUInt32LE(mark >>> 0);
    rawSyscall('setsockopt(SO_MARK)', SYS.setsockopt, s, 1, SO_MARK, libc.address(m), 4);
    const to = Buffer.alloc(v6 ? 28 : 16);
    to.writeUInt16LE(family, 0);
    if (v6) dst.ip.copy(to, 8); else dst.ip.copy(to, 4);
    rawSyscall('sendto(raw)', SYS.sendto, s, libc.address(pkt), pkt.length, 0, libc.address(to), to.length);
  } finally {
    rawSyscall('close', SYS.close, s);
  }
}

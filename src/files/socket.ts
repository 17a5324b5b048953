/**
 * Sockets that carry no connection state: listening TCP/unix stream
 * sockets (bound again and listening after restore) and bound or connected
 * datagram sockets. tsnap inspects its own copy of the socket (pidfd_getfd):
 * family, type, protocol, addresses and options come from getsockopt and
 * getsockname. Connections already accepted or established are not
 * restorable yet and are refused at dump, naming the fd.
 */
import { chmodSync, chownSync, closeSync, lstatSync, unlinkSync, writeSync } from 'node:fs';
import {
  pidfdGetfd, getsockoptInt, getsockoptBuf, getsockname, destroyTimeWait, getpeername, unixPeerInode, pidfdOpen, SysError, SYS, O_CLOEXEC, O_NONBLOCK,
  SOL_SOCKET, SO, IPPROTO_IPV6, IPV6_V6ONLY, AF_UNIX, AF_INET, AF_INET6, F_SETFL,
} from '../sys/index.js';
import type { FdImage, SocketImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { readSocketOptions, applySocketOptions } from './socket-options.js';
import { placeFds, placeEnds, SETFL_MASK } from './place.js';
import { describeTcp, restoreTcp, restoreTcpClosed, type RepairSession } from './tcp.js';
import { readPairQueue } from './scm-rights.js';
import { describeClosedTcp, shutdownHow, RCV_SHUTDOWN, SEND_SHUTDOWN } from './tcp-closed.js';
import { TsnapError } from '../errors.js';
import type { FdKindModule } from './kind.js';
import { describeSocketState } from './socket-state.js';
import { enterUnixDir, unixStalePath, refillUnixQueue, restorePeerClosed } from './unix.js';

const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_SEQPACKET = 5;
/** What listen() is given at restore: the kernel caps it at net.core.somaxconn. */
const BACKLOG = 4096;
const IPPROTO_TCP_ = 6;

export interface SocketOptions {
  /** Take established TCP connections with repair mode (dump --tcp-established). */
  tcpEstablished?: boolean;
  /** Frozen: repair mode may be entered. False for the check before the freeze. */
  enter?: boolean;
  /** dump --ext-unix-sk: a unix datagram socket connected to a named socket outside the dump connects to that name again at restore (files/unix.ts). */
  extUnixSk?: boolean;
  /**
   * Take connected TCP sockets as closed ones (dump --tcp-close): they come
   * back shut down both ways, unbound, as after a reset; nothing is locked.
   */
  tcpClose?: boolean;
  /** Where the connections entered into repair mode belong: the frozen set's (src/dump/session.ts). */
  repair?: RepairSession;
}

export function describeSocket(pidfd: number, fd: number, link: string, ino: number, opts: SocketOptions = {}): SocketImage {
  let s: number;
  try {
    s = pidfdGetfd(pidfd, fd);
  } catch (err) {
    throw new TsnapError('permission', `fd ${fd} (${link}): cannot inspect the socket (pidfd_getfd: ${(err as Error).message})`, err);
  }
  try {
    const family = getsockoptInt(s, SOL_SOCKET, SO.DOMAIN);
    const type = getsockoptInt(s, SOL_SOCKET, SO.TYPE);
    const protocol = getsockoptInt(s, SOL_SOCKET, SO.PROTOCOL);
    const what = `fd ${fd} (${familyName(family)} ${typeName(type)} ${link})`;
    if (family !== AF_INET && family !== AF_INET6 && family !== AF_UNIX) {
      throw new TsnapError('unsupported', `${what}: only inet, inet6 and unix sockets can be checkpointed`);
    }
    const listening = getsockoptInt(s, SOL_SOCKET, SO.ACCEPTCONN) === 1;
    const base = {
      family, type, protocol, backlog: BACKLOG,
      reuseAddr: getsockoptInt(s, SOL_SOCKET, SO.REUSEADDR) !== 0,
      reusePort: getsockoptInt(s, SOL_SOCKET, SO.REUSEPORT) !== 0,
      v6Only: family === AF_INET6 && getsockoptInt(s, IPPROTO_IPV6, IPV6_V6ONLY) !== 0,
      options: readSocketOptions(s, family, type),
    };
    if (family === AF_UNIX && !listening) {
      const peerIno = unixPeerInode(ino);
      if (peerIno !== null) {
        // Whether the peer is inside the dump is known only once every fd is read.
        return { ...base, state: 'pair', local: getsockname(s), peer: null, ino, peerIno, ...(opts.enter === false ? { queued: [] } : readPairQueue(s, fd, type)) };
      }
    }
    const peer = listening ? null : getpeername(s);
    if (!listening && peer && type === SOCK_STREAM && family !== AF_UNIX && protocol === IPPROTO_TCP_) {
      // Checked first: a half-closed connection given up needs no repair either.
      if (opts.tcpClose) return closedTcp(base);
      if (!opts.tcpEstablished) {
        throw new TsnapError('unsupported', `${what} is an established TCP connection; dump with --tcp-established to take it with TCP repair mode, or with --tcp-close to bring it back closed`);
      }
      return { ...base, state: 'established', local: getsockname(s), peer, tcp: describeTcp(pidfd, fd, !!opts.enter, opts.repair) ?? undefined };
    }
    if (!listening && peer && type !== SOCK_DGRAM) {
      throw new TsnapError('unsupported', `${what} is a connected stream; only listening, datagram and TCP (--tcp-established) sockets can be restored`);
    }
    if (!listening && peer && type !== SOCK_DGRAM && family === AF_UNIX) {
      throw new TsnapError('unsupported', `${what} is connected to a socket that is gone or outside the dump`);
    }
    // Anything else is a socket not yet used (possibly bound): created, bound and left as it was.
    const local = getsockname(s);
    const img: SocketImage = { ...base, state: listening ? 'listening' : 'bound', local, peer, ...socketFileOf(family, local) };
    if (!listening && !peer && type === SOCK_STREAM && family !== AF_UNIX && protocol === IPPROTO_TCP_) describeUnconnectedTcp(s, fd, ino, what, img);
    return img;
  } finally {
    closeSync(s);
  }
}

/** Mode and owner of the file a unix socket is bound to (an absolute path that is a socket now). */
function socketFileOf(family: number, local: Buffer): { pathFile?: SocketImage['pathFile'] } {
  const path = family === AF_UNIX ? unixPath(local) : null;
  if (!path?.startsWith('/')) return {};
  try {
    const st = lstatSync(path);
    return st.isSocket() ? { pathFile: { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid } } : {};
  } catch {
    return {};
  }
}

/**
 * A TCP socket with neither a listen nor a peer is closed (fresh, bound,
 * or an ended connection) or still connecting; the latter cannot be
 * brought back.
 */
function describeUnconnectedTcp(s: number, fd: number, ino: number, what: string, img: SocketImage): void {
  const state = getsockoptBuf(s, IPPROTO_TCP_, TCP_INFO, 1)[0];
  if (state !== TCP_CLOSE) {
    throw new TsnapError('unsupported', `${what} is a TCP socket in state ${tcpStateName(state)} (connecting); restore cannot resume a connect() under way`);
  }
  const c = describeClosedTcp(s, ino, img.family);
  if (!c.holdsPort) img.local = Buffer.alloc(0);
  if (c.shutdown) img.shutdown = c.shutdown;
  void fd;
}

const TCP_INFO = 11;
const TCP_CLOSE = 7;
const TCP_STATES = ['', 'ESTABLISHED', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT1', 'FIN_WAIT2', 'TIME_WAIT', 'CLOSE', 'CLOSE_WAIT', 'LAST_ACK', 'LISTEN', 'CLOSING'];
/** A TCP state by its kernel name (TCP_INFO tcpi_state). */
export function tcpStateName(state: number): string {
  return TCP_STATES[state] ?? `${state}`;
}

/** A TCP connection given up (--tcp-close): a closed socket, shut down both ways, holding no port. */
export function closedTcp<T extends Omit<SocketImage, 'state' | 'local' | 'peer'>>(base: T): SocketImage {
  const { tcp: _drop, ...rest } = base as T & { tcp?: unknown };
  void _drop;
  return { ...rest, state: 'bound', local: Buffer.alloc(0), peer: null, shutdown: RCV_SHUTDOWN | SEND_SHUTDOWN };
}

/** A unix socket's filesystem path, or null for unnamed and abstract ones. */
function unixPath(addr: Buffer): string | null {
  if (addr.length <= 2 || addr[2] === 0) return null;
  const end = addr.indexOf(0, 2);
  return addr.subarray(2, end < 0 ? addr.length : end).toString();
}

/** An inet address is bound when its port is not 0. */
function isBound(s: SocketImage): boolean {
  if (s.family === AF_UNIX) return s.local.length > 2;
  return s.local.length >= 4 && s.local.readUInt16BE(2) !== 0;
}

export function restoreSocket(rt: RemoteTask, group: FdImage[], floor: number): void {
  const f = group[0];
  const s = f.socket!;
  const what = `fd ${f.fd} (${familyName(s.family)} ${typeName(s.type)})`;
  const tmp = Number(rt.sc.check(`socket for ${what}`, SYS.socket, s.family, s.type | O_CLOEXEC | (f.flags & O_NONBLOCK), s.protocol));
  const one = rt.put(Buffer.from([1, 0, 0, 0]), 512);
  // A TCP port whose connections outlive the dumped listener (TIME_WAIT, or
  // restored established ones) refuses a plain bind: bind with SO_REUSEADDR,
  // as the kernel allows while no other socket listens there, then put the
  // option back as it was.
  const lendReuse = !s.reuseAddr && (s.family === AF_INET || s.family === AF_INET6) && s.type === SOCK_STREAM && isBound(s);
  if (s.reuseAddr || lendReuse) rt.sc.check('setsockopt(SO_REUSEADDR)', SYS.setsockopt, tmp, SOL_SOCKET, SO.REUSEADDR, one, 4);
  // Listeners that shared a port with SO_REUSEPORT may since have cleared
  // it on one of them (the kernel checks only at bind): every listener
  // binds with it, and finishFiles() puts it back as recorded once all are bound.
  if (s.reusePort || lendsReusePort(s)) rt.sc.check('setsockopt(SO_REUSEPORT)', SYS.setsockopt, tmp, SOL_SOCKET, SO.REUSEPORT, one, 4);
  if (s.v6Only) rt.sc.check('setsockopt(IPV6_V6ONLY)', SYS.setsockopt, tmp, IPPROTO_IPV6, IPV6_V6ONLY, one, 4);
  // Before the bind: IP_FREEBIND lets it bind an address this host does not have (yet).
  applySocketOptions(s, (level, opt, value) => rt.sc.check(`setsockopt(${level}, ${opt})`, SYS.setsockopt, tmp, level, opt, rt.put(value, 1024), value.length));
  if (isBound(s)) {
    const path = s.family === AF_UNIX ? unixPath(s.local) : null;
    // The dead original left its socket file behind; binding needs the name free.
    if (path) {
      try { if (lstatSync(unixStalePath(s, path)).isSocket()) unlinkSync(unixStalePath(s, path)); } catch { /* absent */ }
    }
    enterUnixDir(rt, s.dir);
    // An address this host does not have now (it had it, or the socket had
    // IP_FREEBIND then) binds with FREEBIND lent, put back as recorded.
    const freebind = s.family === AF_INET ? [0, 15] : s.family === AF_INET6 ? [IPPROTO_IPV6, 78] : null;
    const lendFreebind = freebind && !s.options?.some(([l, o, v]) => l === freebind[0] && o === freebind[1] && v.readInt32LE(0) !== 0);
    if (lendFreebind) rt.sc.check('setsockopt(FREEBIND)', SYS.setsockopt, tmp, freebind[0], freebind[1], one, 4);
    let r = rt.sc.call(SYS.bind, tmp, rt.put(s.local), s.local.length);
    // A listener's own past connections, closed by the kill of the dump,
    // may hold its port in TIME_WAIT, which a listener without SO_REUSEADDR
    // cannot bind past; the original held the port before them.
    if (r === -98n /* EADDRINUSE */ && s.state === 'listening' && s.type === SOCK_STREAM && (s.family === AF_INET || s.family === AF_INET6)
      && destroyTimeWait(s.family, s.local.readUInt16BE(2)) > 0) {
      r = rt.sc.call(SYS.bind, tmp, rt.put(s.local), s.local.length);
    }
    if (lendFreebind) rt.sc.check('setsockopt(FREEBIND off)', SYS.setsockopt, tmp, freebind[0], freebind[1], rt.put(Buffer.alloc(4), 528), 4);
    if (r < 0n) {
      const err = new SysError(`bind(${describeAddr(s)})`, Number(-r));
      const hint = err.code === 'EADDRINUSE' ? ' (is the original process still running? dump without --leave-running, or stop it)' : '';
      throw new TsnapError('restoreFailed', `${what}: cannot bind ${describeAddr(s)} again: ${err.code}${hint}`, err);
    }
    // bind made the file as tsnap (root, its umask): as the program had it.
    if (path?.startsWith('/') && s.pathFile) {
      chownSync(path, s.pathFile.uid, s.pathFile.gid);
      chmodSync(path, s.pathFile.mode);
    }
  }
  if (s.state === 'listening') rt.sc.check(`listen(${what})`, SYS.listen, tmp, s.backlog);
  if (lendReuse) rt.sc.check('setsockopt(SO_REUSEADDR off)', SYS.setsockopt, tmp, SOL_SOCKET, SO.REUSEADDR, rt.put(Buffer.alloc(4), 520), 4);
  // Unix sockets connect by name once every socket exists (files/unix.ts).
  if (s.family === AF_UNIX) refillUnixQueue(rt, s, what);
  else if (s.peer) rt.sc.check(`connect(${what})`, SYS.connect, tmp, rt.put(s.peer), s.peer.length);
  // A TCP socket records a shutdown even without a connection (answering ENOTCONN); unix and UDP ones get theirs once queues are back (socket-state.ts).
  const how = s.family !== AF_UNIX && s.type === SOCK_STREAM ? shutdownHow(s.shutdown ?? 0) : -1;
  if (how >= 0) {
    const r = rt.sc.call(SYS.shutdown, tmp, how);
    if (r < 0n && Number(-r) !== 107 /* ENOTCONN */) throw new TsnapError('restoreFailed', `${what}: shutdown: ${new SysError('shutdown', Number(-r)).code}`);
  }
  placeFds(rt, [{ tmp, targets: group }], floor);
}

/** A TCP listener that had no SO_REUSEPORT binds with it lent (see restoreSocket). */
export function lendsReusePort(s: SocketImage): boolean {
  return !s.reusePort && s.state === 'listening' && (s.family === AF_INET || s.family === AF_INET6) && s.type === SOCK_STREAM;
}

function familyName(f: number): string {
  return f === AF_INET ? 'inet' : f === AF_INET6 ? 'inet6' : f === AF_UNIX ? 'unix' : `family ${f}`;
}
function typeName(t: number): string {
  return t === SOCK_STREAM ? 'stream' : t === SOCK_DGRAM ? 'datagram' : t === SOCK_SEQPACKET ? 'seqpacket' : `type ${t}`;
}

export function describeAddr(s: SocketImage): string {
  const a = s.local;
  if (s.family === AF_INET && a.length >= 8) return `${a[4]}.${a[5]}.${a[6]}.${a[7]}:${a.readUInt16BE(2)}`;
  if (s.family === AF_INET6 && a.length >= 24) {
    const parts: string[] = [];
    for (let i = 0; i < 8; i++) parts.push(a.readUInt16BE(8 + i * 2).toString(16));
    return `[${parts.join(':')}]:${a.readUInt16BE(2)}`;
  }
  if (s.family === AF_UNIX) return unixPath(a) ?? (a.length > 2 ? `@${a.subarray(3).toString()}` : 'unnamed');
  return 'unknown address';
}

/**
 * A connected pair of unix sockets, both ends in the image: created with
 * socketpair in the first process that has either end, the queued data put
 * back by writing it into the opposite end. Returns where each end is in
 * that process (an end it lacks is carried above every target number for
 * another process of the tree to take).
 */
export function restoreSocketPair(rt: RemoteTask, ends: FdImage[][], floor: number, inoA: number, queuedOf: (ino: number) => Buffer[],
  socketOf: (ino: number) => SocketImage | undefined = () => undefined, ownName: (s: SocketImage) => boolean = () => false): { a: number; b: number } {
  const s = ends[0][0].socket!;
  const at = rt.put(Buffer.alloc(8));
  rt.sc.check('socketpair', SYS.socketpair, AF_UNIX, s.type | O_CLOEXEC, 0, at);
  const fds = rt.get(8);
  const [a, b] = [fds.readInt32LE(0), fds.readInt32LE(4)];
  const inoB = s.ino === inoA ? s.peerIno! : s.ino!;
  // Both ends as the image has them, also the one another process of the tree holds.
  for (const [ino, end] of [[inoA, a], [inoB, b]]) {
    const k = socketOf(ino) ?? ends.flat().find((f) => f.socket!.ino === ino)?.socket;
    if (!k) continue;
    applySocketOptions(k, (level, opt, value) => rt.sc.check(`setsockopt(${level}, ${opt})`, SYS.setsockopt, end, level, opt, rt.put(value, 1024), value.length));
    // An end bound to an abstract name of its own (bind, or autobind) gets
    // it again. Not a name another socket of the image has too: an accepted
    // socket shows its listener's. Not a path: binding would take the file.
    // A name taken meanwhile is only what getsockname shows of a connected
    // pair: the pair works without it, so it does not fail the restore.
    if (isBound(k) && k.local[2] === 0 && ownName(k)) rt.sc.call(SYS.bind, end, rt.put(k.local), k.local.length);
  }
  const isA = (f: FdImage) => f.socket!.ino === inoA;
  // What end X had queued was sent by its peer: write it into the other end.
  // (The ends may be in other processes: their queues come from the whole image.)
  const queuedOn = (wantA: boolean) => queuedOf(wantA ? inoA : inoB);
  const pidfd = pidfdOpen(rt.pid);
  try {
    for (const [dst, src] of [[true, b], [false, a]] as const) {
      const q = queuedOn(dst);
      if (q.length === 0) continue;
      const mine = pidfdGetfd(pidfd, src);
      try {
        for (const msg of q) {
          const n = writeSync(mine, msg);
          if (n !== msg.length) throw new TsnapError('restoreFailed', `socket pair: only ${n} of ${msg.length} queued bytes fit back`);
        }
      } finally {
        closeSync(mine);
      }
    }
  } finally {
    closeSync(pidfd);
  }
  for (const g of ends) {
    // O_ASYNC too: nginx's master is told of its channel's messages by SIGIO.
    const flags = g[0].flags & SETFL_MASK;
    if (flags) rt.sc.check('fcntl(F_SETFL)', SYS.fcntl, isA(g[0]) ? a : b, F_SETFL, flags);
  }
  return placeEnds(rt, { tmp: a, targets: ends.filter((g) => isA(g[0])).flat() }, { tmp: b, targets: ends.filter((g) => !isA(g[0])).flat() }, floor);
}

/**
 * Sockets: unix pairs are made with both ends at once, established TCP
 * with repair mode (tcp.ts), the others here. A socket on 0-2 that is not
 * one end of a pair inside the dump is stdio, whatever it is.
 */
export const socketKind: FdKindModule = {
  describe(c, img) {
    try {
      img.socket = describeSocket(c.pidfd, img.fd, c.target.link, c.target.ino, c.opts);
      describeSocketState(c.pidfd, img.fd, img.socket, c.target.ino);
    } catch (err) {
      if (img.fd > 2) throw err;
    }
  },
  restorable: (f) => !!f.socket,
  restore(c, group) {
    const s = group[0].socket!;
    if (s.state === 'pair') c.defer('pair', Math.min(s.ino!, s.peerIno!), group);
    else if (s.state === 'established') (c.tcpClose ? restoreTcpClosed : restoreTcp)(c.rt, group, c.floor);
    else if (s.state === 'peer-closed') restorePeerClosed(c.rt, group, c.floor);
    else restoreSocket(c.rt, group, c.floor);
  },
};

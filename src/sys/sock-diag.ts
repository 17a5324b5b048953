/**
 * sock_diag (NETLINK_SOCK_DIAG): what the kernel tells about a socket that
 * no getsockopt does — a unix socket's peer and the clients waiting in a
 * listener's queue, the shutdown state of unix and UDP sockets, queue
 * lengths. Read-only: asking changes nothing in the socket.
 */
import { libc } from './libc.js';
import { rawSyscall } from './fd.js';
import { SYS } from './uapi.js';
import { SysError } from './errors.js';

const AF_NETLINK = 16;
const NETLINK_SOCK_DIAG = 4;
const SOCK_DIAG_BY_FAMILY = 20;
const NLM_F_REQUEST = 1;
const NLM_F_DUMP = 0x300;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NOCOOKIE = 0xffffffff;

const UDIAG_SHOW_NAME = 1;
const UDIAG_SHOW_VFS = 2;
const UDIAG_SHOW_PEER = 4;
const UDIAG_SHOW_ICONS = 8;
const UDIAG_SHOW_RQLEN = 16;
const UNIX_DIAG_NAME = 0;
const UNIX_DIAG_VFS = 1;
const UNIX_DIAG_PEER = 2;
const UNIX_DIAG_ICONS = 3;
const UNIX_DIAG_RQLEN = 4;
const UNIX_DIAG_SHUTDOWN = 6;
const INET_DIAG_SHUTDOWN = 8;
const IPPROTO_TCP = 6;
const TCP_TIME_WAIT = 6;
/** Pseudo-state of inet_diag (Linux 6.7+): a TCP socket that is bound but neither listening nor connected. */
const TCP_BOUND_INACTIVE = 13;
const SOCK_DESTROY = 21;
const NLM_F_ACK = 4;

export interface UnixDiag {
  ino: number;
  /** TCP_* state numbers as the kernel uses them for unix sockets (10: listening). */
  state: number;
  /** Inode of the peer; 0 when the peer has no file (closed, or a connection not yet accepted); null: no peer. */
  peer: number | null;
  /** sk_shutdown: bit 0 receive, bit 1 send. */
  shutdown: number;
  /** The bound name as sun_path bytes (a leading 0 for abstract ones), null when unbound. */
  name: Buffer | null;
  /** The socket file of a name in the filesystem. */
  vfs: { dev: number; ino: number } | null;
  /** A listener's queue: the inode of each waiting connection's client (0 when it has none). */
  icons: number[];
  /** Listener: connections waiting and the backlog; others: bytes to read and bytes sent not yet read by the peer. */
  rq: number;
  wq: number;
}

function withSockDiag<T>(fn: (nl: number) => T): T {
  const nl = rawSyscall('socket(AF_NETLINK)', SYS.socket, AF_NETLINK, 3 /* SOCK_RAW */ | 0o2000000, NETLINK_SOCK_DIAG);
  try {
    return fn(nl);
  } finally {
    rawSyscall('close', SYS.close, nl);
  }
}

function header(len: number, flags: number, type = SOCK_DIAG_BY_FAMILY): Buffer {
  const req = Buffer.alloc(len);
  req.writeUInt32LE(len, 0);
  req.writeUInt16LE(type, 4);
  req.writeUInt16LE(NLM_F_REQUEST | flags, 6);
  req.writeUInt32LE(1, 8);
  return req;
}

/** Every answer message (type, payload) until NLMSG_DONE, or the one answer of a non-dump request. */
function* answers(nl: number, what: string, dump: boolean): Generator<Buffer> {
  const resp = Buffer.alloc(1 << 16);
  for (;;) {
    const n = rawSyscall(`recvfrom(${what})`, SYS.recvfrom, nl, libc.address(resp), resp.length, 0, 0, 0);
    if (n < 16) throw new SysError(`${what}: short answer`, 5);
    for (let at = 0; at + 16 <= n;) {
      const len = resp.readUInt32LE(at);
      const type = resp.readUInt16LE(at + 4);
      if (len < 16 || at + len > n) throw new SysError(`${what}: malformed answer`, 5);
      if (type === NLMSG_DONE) return;
      if (type === NLMSG_ERROR) {
        const e = -resp.readInt32LE(at + 16);
        if (e === 0) return;
        throw new SysError(what, e);
      }
      yield resp.subarray(at + 16, at + len);
      if (!dump) return;
      at += (len + 3) & ~3;
    }
  }
}

/** The attributes (rtattr: u16 len, u16 type) of a payload from `from`. */
function attrs(p: Buffer, from: number): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (let at = from; at + 4 <= p.length;) {
    const alen = p.readUInt16LE(at);
    if (alen < 4 || at + alen > p.length) break;
    out.set(p.readUInt16LE(at + 2), p.subarray(at + 4, at + alen));
    at += (alen + 3) & ~3;
  }
  return out;
}

function parseUnix(p: Buffer): UnixDiag {
  const a = attrs(p, 16);
  const name = a.get(UNIX_DIAG_NAME);
  const vfs = a.get(UNIX_DIAG_VFS);
  const icons = a.get(UNIX_DIAG_ICONS);
  const rqlen = a.get(UNIX_DIAG_RQLEN);
  const peer = a.get(UNIX_DIAG_PEER);
  const out: number[] = [];
  for (let i = 0; icons && i + 4 <= icons.length; i += 4) out.push(icons.readUInt32LE(i));
  return {
    ino: p.readUInt32LE(4),
    state: p[2],
    peer: peer ? peer.readUInt32LE(0) : null,
    shutdown: a.get(UNIX_DIAG_SHUTDOWN)?.[0] ?? 0,
    name: name ? Buffer.from(name) : null,
    vfs: vfs ? { ino: vfs.readUInt32LE(0), dev: vfs.readUInt32LE(4) } : null,
    icons: out,
    rq: rqlen ? rqlen.readUInt32LE(0) : 0,
    wq: rqlen ? rqlen.readUInt32LE(4) : 0,
  };
}

const UNIX_SHOW = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;

/** What sock_diag tells of the unix socket with inode `ino` (the inode of its fd). */
export function unixDiag(ino: number): UnixDiag {
  return withSockDiag((nl) => {
    const req = header(16 + 24, 0);
    req.writeUInt8(1, 16); // AF_UNIX
    req.writeUInt32LE(0xffffffff, 20); // every state
    req.writeUInt32LE(ino, 24);
    req.writeUInt32LE(UNIX_SHOW, 28);
    req.writeUInt32LE(NOCOOKIE, 32);
    req.writeUInt32LE(NOCOOKIE, 36);
    rawSyscall('sendto(sock_diag)', SYS.sendto, nl, libc.address(req), req.length, 0, 0, 0);
    for (const p of answers(nl, `sock_diag(unix ${ino})`, false)) return parseUnix(p);
    throw new SysError(`sock_diag(unix ${ino}): no answer`, 2);
  });
}

/**
 * The shutdown state (bit 0 receive, bit 1 send) of every inet socket of
 * that family and protocol, by inode, from one dump (lookups by address
 * need the exact 4-tuple).
 */
export function inetShutdowns(family: number, protocol: number): Map<number, number> {
  return withSockDiag((nl) => {
    const req = header(16 + 56, NLM_F_DUMP);
    req.writeUInt8(family, 16);
    req.writeUInt8(protocol, 17);
    req.writeUInt32LE(0xffffffff, 20); // every state
    req.writeUInt32LE(NOCOOKIE, 24 + 40);
    req.writeUInt32LE(NOCOOKIE, 24 + 44);
    rawSyscall('sendto(sock_diag)', SYS.sendto, nl, libc.address(req), req.length, 0, 0, 0);
    const out = new Map<number, number>();
    for (const p of answers(nl, `sock_diag(inet ${family}/${protocol})`, true)) {
      if (p.length >= 72) out.set(p.readUInt32LE(68), attrs(p, 72).get(INET_DIAG_SHUTDOWN)?.[0] ?? 0);
    }
    return out;
  });
}

/**
 * The inode of the socket a unix socket is connected to (the only place
 * the kernel tells it); null when it has no peer. `ino`: the socket's own
 * inode (stat of its fd).
 */
export function unixPeerInode(ino: number): number | null {
  return withSockDiag((nl) => {
    const req = header(16 + 24, 0);
    req.writeUInt8(1, 16); // AF_UNIX
    req.writeUInt32LE(0xffffffff, 20);
    req.writeUInt32LE(ino, 24);
    req.writeUInt32LE(UDIAG_SHOW_PEER, 28);
    req.writeUInt32LE(NOCOOKIE, 32);
    req.writeUInt32LE(NOCOOKIE, 36);
    rawSyscall('sendto(sock_diag)', SYS.sendto, nl, libc.address(req), req.length, 0, 0, 0);
    for (const p of answers(nl, `sock_diag(unix ${ino})`, false)) {
      const peer = attrs(p, 16).get(UNIX_DIAG_PEER);
      return peer ? peer.readUInt32LE(0) : null;
    }
    return null;
  });
}

/** A dump request for the TCP sockets of `family` in the states of `stateMask`. */
function tcpDumpRequest(family: number, stateMask: number): Buffer {
  const req = header(16 + 56, NLM_F_DUMP);
  req.writeUInt8(family, 16);
  req.writeUInt8(IPPROTO_TCP, 17);
  req.writeUInt32LE(stateMask, 20);
  return req;
}

/**
 * Inodes of the TCP sockets of `family` that hold a bound port while
 * closed. null when the kernel cannot tell (before Linux 6.7 it does not
 * list such sockets, or refuses the state bit).
 */
export function tcpBoundInactive(family: number): Set<number> | null {
  return withSockDiag((nl) => {
    const req = tcpDumpRequest(family, 1 << TCP_BOUND_INACTIVE);
    rawSyscall('sendto(inet_diag)', SYS.sendto, nl, libc.address(req), req.length, 0, 0, 0);
    const out = new Set<number>();
    try {
      // struct inet_diag_msg: the inode at +68.
      for (const p of answers(nl, 'inet_diag(bound inactive)', true)) if (p.length >= 72) out.add(p.readUInt32LE(68));
    } catch (err) {
      if (err instanceof SysError) return null;
      throw err;
    }
    return out;
  });
}

/**
 * Ends the TIME_WAIT entries whose local port is `port` (family AF_INET or
 * AF_INET6), through SOCK_DESTROY; returns how many went.
 */
export function destroyTimeWait(family: number, port: number): number {
  return withSockDiag((nl) => {
    const req = tcpDumpRequest(family, 1 << TCP_TIME_WAIT);
    rawSyscall('sendto(inet_diag)', SYS.sendto, nl, libc.address(req), req.length, 0, 0, 0);
    // struct inet_diag_msg: the socket id (48 bytes, sport first, big-endian) at +4.
    // Copied out: each answer is a view of a buffer the next read reuses.
    const ids: Buffer[] = [];
    for (const p of answers(nl, 'inet_diag(time-wait)', true)) if (p.length >= 72 && p.readUInt16BE(4) === port) ids.push(Buffer.from(p.subarray(4, 52)));
    let gone = 0;
    for (const id of ids) {
      const d = header(16 + 56, NLM_F_ACK, SOCK_DESTROY);
      d.writeUInt8(family, 16);
      d.writeUInt8(IPPROTO_TCP, 17);
      d.writeUInt32LE(1 << TCP_TIME_WAIT, 20);
      id.copy(d, 24);
      rawSyscall('sendto(sock_destroy)', SYS.sendto, nl, libc.address(d), d.length, 0, 0, 0);
      try {
        for (const _ of answers(nl, 'sock_destroy', false)) { /* an ack carries no payload */ }
        gone++;
      } catch (err) {
        // Gone meanwhile (ENOENT), or another socket's: not ours to fail on.
        if (!(err instanceof SysError)) throw err;
      }
    }
    return gone;
  });
}

/** [inode, peer inode] of every unix socket that has a peer, from a dump of them all. */
export function unixPeers(): [number, number][] {
  return withSockDiag((nl) => {
    const req = header(16 + 24, NLM_F_DUMP);
    req.writeUInt8(1, 16); // AF_UNIX
    req.writeUInt32LE(0xffffffff, 20);
    req.writeUInt32LE(UDIAG_SHOW_PEER, 28);
    req.writeUInt32LE(NOCOOKIE, 32);
    req.writeUInt32LE(NOCOOKIE, 36);
    rawSyscall('sendto(sock_diag)', SYS.sendto, nl, libc.address(req), req.length, 0, 0, 0);
    const out: [number, number][] = [];
    for (const p of answers(nl, 'sock_diag(unix dump)', true)) {
      const peer = attrs(p, 16).get(UNIX_DIAG_PEER);
      if (peer) out.push([p.readUInt32LE(4), peer.readUInt32LE(0)]);
    }
    return out;
  });
}

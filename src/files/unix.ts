/**
 * Unix sockets as programs hold them, beyond pairs with both ends in the
 * dump (files/socket.ts):
 *
 * - peer closed: the other end of a pair or of an accepted connection was
 *   closed, data may still be queued (every JVM using NIO holds such a
 *   half-closed pair). Restored as a new pair: the queue is written back
 *   through the other end, which is then closed, so the kernel puts the
 *   survivor in the state the close left it in (EOF after the data, EPIPE
 *   on write; ECONNRESET if the closed end had data unread).
 * - connected by name: a datagram socket connect()ed to a receiver that is
 *   not connected back (several may send to one, a socket may send to
 *   itself), and a client whose connection still waits in a listener's
 *   queue. Both connect() again to the peer's name once every socket of the
 *   restored tree exists.
 * - relative names: bound (and connected) in the directory that was the
 *   process's cwd at dump.
 * - named datagram receivers keep their queue: sent again to their name.
 *
 * sock_diag tells which is which: the peer's inode (0 when the peer has no
 * file: closed, or not yet accepted), and a listener's waiting clients.
 */
import { keepPeerForRequeue } from './scm-rights.js';
import { closeSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import {
  pidfdOpen, pidfdGetfd, peekQueued, unixDiag, unixPeers, setsockopt, rawSyscall, pollNow, ioctlInt, getpeername, sendToAddr, sendNoWait, SysError, SYS,
  O_CLOEXEC, O_NONBLOCK, F_SETFL, SOL_SOCKET, AF_UNIX, type UnixDiag,
} from '../sys/index.js';
import type { FdImage, SocketImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { applySocketOptions } from './socket-options.js';
import { placeFds } from './place.js';
import { TsnapError } from '../errors.js';

const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SIOCINQ = 0x541b;
const SO_SNDBUFFORCE = 32;
const SO_SNDBUF = 7;
const POLLERR = 8;
const DELETED = ' (deleted)';

/** An fd as the dump's fd pass saw it. */
export interface SeenSocket {
  pid: number;
  t: { ino: number };
  img: FdImage;
}

export interface UnixLinkOptions {
  /** False for the check before the freeze: refuse what cannot be restored, read no queues. */
  enter?: boolean;
  /** dump --ext-unix-sk: a datagram socket connected to a named socket outside the dump connects to that name again. */
  extUnixSk?: boolean;
  /** Before the freeze with files in flight somewhere: a peer may be one of them (the frozen pass decides). */
  endsLater?: boolean;
}

/** The path of a unix name (sockaddr bytes), null for unnamed and abstract ones. */
export function unixPathOf(addr: Buffer): string | null {
  if (addr.length <= 2 || addr[2] === 0) return null;
  const end = addr.indexOf(0, 2);
  return addr.subarray(2, end < 0 ? addr.length : end).toString();
}

const isNamed = (addr: Buffer | null): boolean => !!addr && addr.length > 2;
const isRelative = (addr: Buffer | null): boolean => { const p = addr ? unixPathOf(addr) : null; return !!p && !p.startsWith('/'); };

function describeName(addr: Buffer): string {
  const p = unixPathOf(addr);
  return p ?? (addr.length > 2 ? `@${addr.subarray(3).toString()}` : 'unnamed');
}

/**
 * Once every fd of the dump is read: decides how each unix socket comes
 * back, and refuses what cannot (naming the fd). A socket on 0-2 is the
 * process's own only when its peer is in the dump; otherwise it is stdio,
 * left to restore's stdio.
 */
export function linkUnixSockets(seen: SeenSocket[], tree: boolean, opts: UnixLinkOptions = {}): void {
  const frozen = opts.enter !== false;
  const unix = seen.filter((s) => s.img.socket?.family === AF_UNIX);
  const byIno = new Map(unix.map((s) => [s.t.ino, s]));
  // What each socket was connected to as describeSocket found it: states change below.
  const peerOf = new Map(unix.map((s) => [s.t.ino, s.img.socket!.state === 'pair' ? s.img.socket!.peerIno! : null]));
  const diags = new Map<number, UnixDiag | null>();
  const diag = (ino: number): UnixDiag | null => {
    if (!diags.has(ino)) {
      try { diags.set(ino, unixDiag(ino)); } catch (err) {
        // Before the freeze a socket may be closed under us: the frozen pass decides.
        if (!frozen && err instanceof SysError && err.code === 'ENOENT') diags.set(ino, null); else throw err;
      }
    }
    return diags.get(ino)!;
  };
  const cwds = new Map<number, string>();
  const cwdOf = (pid: number, what: string): string => {
    if (!cwds.has(pid)) cwds.set(pid, readlinkSync(`/proc/${pid}/cwd`));
    const cwd = cwds.get(pid)!;
    if (cwd.endsWith(DELETED)) throw new TsnapError('unsupported', `${what} has a name relative to the cwd of process ${pid}, which was deleted (${cwd}); restore could not bind it there again`);
    return cwd;
  };
  const dirOf = (s: SeenSocket, addr: Buffer, what: string): string | undefined => (isRelative(addr) ? cwdOf(s.pid, what) : undefined);

  for (const s of unix) {
    const k = s.img.socket!;
    const ino = s.t.ino;
    const peerIno = peerOf.get(ino) ?? null;
    if (s.img.fd <= 2 && (peerIno === null || !byIno.has(peerIno))) {
      delete s.img.socket;
      continue;
    }
    const what = `fd ${s.img.fd} of process ${s.pid}`;
    // The frozen pass refuses it too (peekQueued); here it is refused before the freeze.
    if (!frozen && k.type !== SOCK_STREAM && k.state !== 'listening' && errorWithData(s)) {
      throw new TsnapError('unsupported', `${what} is a unix socket with a socket error pending and data queued; reading the queue would clear the error, so tsnap cannot take it`);
    }
    if (isNamed(k.local)) {
      const dir = dirOf(s, k.local, `${what} (unix socket ${describeName(k.local)})`);
      if (dir) k.dir = dir;
    }
    if (k.state === 'listening') {
      // Unlike TCP's, a unix listener's backlog is visible: sock_diag gives it.
      const d = diag(ino);
      if (d && d.wq > 0) k.backlog = d.wq;
      continue;
    }
    if (k.state === 'bound') {
      // Peeked before the freeze too: a queue restore could not put back is refused while the target runs.
      if (k.type === SOCK_DGRAM && isNamed(k.local)) {
        const q = checkQueueLength(peekOwnQueue(s, what), what);
        if (frozen) k.queued = q;
      }
      continue;
    }
    if (k.state !== 'pair' || peerIno === null) continue;

    if (peerIno === ino) {
      // Connected to itself: bound first, then connected to its own name.
      if (!isNamed(k.local)) throw new TsnapError('unsupported', `${what} is a unix socket connected to itself without a name; restore could not connect it again`);
      connectByName(k, k.local, k.dir);
      checkQueueEarly(s, frozen, what);
      checkQueueRestorable(k, what);
      continue;
    }
    const peer = byIno.get(peerIno);
    if (peer) {
      if (peerOf.get(peerIno) === ino) continue; // both ends in the dump: a pair (files/socket.ts)
      const pk = peer.img.socket!;
      if (k.type !== SOCK_DGRAM || !isNamed(pk.local)) {
        throw new TsnapError('unsupported', `${what} is a unix socket connected one way to fd ${peer.img.fd} of process ${peer.pid} (socket:[${peerIno}]), which has no name to connect to again`);
      }
      connectByName(k, pk.local, dirOf(peer, pk.local, `fd ${peer.img.fd} of process ${peer.pid}`));
      checkQueueEarly(s, frozen, what);
      checkQueueRestorable(k, what);
      continue;
    }
    if (peerIno === 0) {
      if (k.type !== SOCK_DGRAM) {
        const listener = unix.find((l) => l.img.socket?.state === 'listening' && (diag(l.t.ino)?.icons.includes(ino) ?? false));
        if (listener) {
          const d = diag(ino);
          if (d && d.wq > 0) {
            throw new TsnapError('unsupported', `${what} has sent data on a unix connection that fd ${listener.img.fd} of process ${listener.pid} has not accepted yet; restore could not put it back`);
          }
          connectByName(k, listener.img.socket!.local, dirOf(listener, listener.img.socket!.local, `fd ${listener.img.fd} of process ${listener.pid}`));
          k.queued = [];
          continue;
        }
        if (waitsOutside(ino)) {
          throw new TsnapError('unsupported', `${what} is a unix socket whose connection waits in the queue of a listener outside ${tree ? 'the dumped tree' : 'the process'} (not accepted yet); only connections inside the dump can be restored`);
        }
      }
      k.state = 'peer-closed';
      delete k.peerIno;
      if (frozen && k.type !== SOCK_DGRAM && pendingError(s)) k.reset = true;
      continue;
    }
    if (opts.extUnixSk && k.type === SOCK_DGRAM) {
      // The receiver is not restored: only its name says where it is, and a relative one is relative to a cwd tsnap does not know.
      const to = withCopy(s, (copy) => getpeername(copy));
      if (!to || !isNamed(to) || isRelative(to)) {
        throw new TsnapError('unsupported', `${what} is a unix socket connected to socket:[${peerIno}] outside the dump, ${to && isRelative(to) ? `by the relative name ${describeName(to)}` : 'which has no name'}; --ext-unix-sk could not connect it again`);
      }
      connectByName(k, to, undefined);
      checkQueueEarly(s, frozen, what);
      checkQueueRestorable(k, what);
      continue;
    }
    if (opts.endsLater) continue;
    const hint = k.type === SOCK_DGRAM ? '; dump with --ext-unix-sk to connect it to the same name again at restore' : '';
    throw new TsnapError('unsupported', `${what} is a unix socket connected to socket:[${peerIno}] outside ${tree ? 'the dumped tree' : 'the process (dump its parent with --tree if the peer is there)'}; only connections inside the dump can be restored${hint}`);
  }
}

/** Turns a `pair` into a socket that connects to `addr` at restore. */
function connectByName(k: SocketImage, addr: Buffer, dir: string | undefined): void {
  k.state = 'bound';
  k.peer = Buffer.from(addr);
  if (dir) k.peerDir = dir;
  delete k.peerIno;
}

/** A datagram sent to a socket without a name could only come from its peer: restore has no way to queue it again. */
function checkQueueRestorable(k: SocketImage, what: string): void {
  if (k.queued?.length && !isNamed(k.local)) {
    throw new TsnapError('unsupported', `${what} is an unnamed unix datagram socket with ${k.queued.length} datagram(s) queued; restore could not queue them again`);
  }
  if (k.queued?.length) checkQueueLength(k.queued, what);
}

/** Before the freeze queues are not read (describeSocket): a one-way socket's is peeked here, to refuse early what the frozen pass would. */
function checkQueueEarly(s: SeenSocket, frozen: boolean, what: string): void {
  if (frozen) return;
  const k = s.img.socket!;
  checkQueueRestorable({ ...k, queued: peekOwnQueue(s, what) }, what);
}

function withCopy<T>(s: SeenSocket, fn: (copy: number) => T): T {
  const pidfd = pidfdOpen(s.pid);
  try {
    const copy = pidfdGetfd(pidfd, s.img.fd);
    try { return fn(copy); } finally { closeSync(copy); }
  } finally {
    closeSync(pidfd);
  }
}

/**
 * Datagrams go back from a socket that is not the receiver's peer, so the
 * kernel holds them to net.unix.max_dgram_qlen (+1); only a receiver's own
 * peer could queue more.
 */
function checkQueueLength(q: Buffer[], what: string): Buffer[] {
  let max = 10;
  try { max = Number(readFileSync('/proc/sys/net/unix/max_dgram_qlen', 'utf8').trim()); } catch { /* the kernel's default */ }
  if (q.length > max + 1) {
    throw new TsnapError('unsupported', `${what} has ${q.length} datagrams queued, more than net.unix.max_dgram_qlen (${max}) lets restore queue again`);
  }
  return q;
}

function errorWithData(s: SeenSocket): boolean {
  return withCopy(s, (copy) => (pollNow(copy) & POLLERR) !== 0 && ioctlInt(copy, SIOCINQ, 'ioctl(SIOCINQ)') > 0);
}

function peekOwnQueue(s: SeenSocket, what: string): Buffer[] {
  const q = withCopy(s, (copy) => peekQueued(copy, false));
  if (q.unreadable) throw new TsnapError('unsupported', `${what} is a unix socket with a socket error pending and data queued; reading the queue would clear the error, so tsnap cannot take it`);
  if (q.control) {
    throw new TsnapError('unsupported', `${what} is a unix socket with file descriptors or credentials in flight (SCM_RIGHTS/SCM_CREDENTIALS); tsnap cannot restore those yet`);
  }
  return q.data;
}

/** Whether a socket error waits (ECONNRESET, the only one unix sockets set): poll shows it without clearing it, SO_ERROR would clear it. */
function pendingError(s: SeenSocket): boolean {
  return withCopy(s, (copy) => (pollNow(copy) & POLLERR) !== 0);
}

/**
 * Whether some socket not yet accepted (it has no inode) names `ino` as its
 * peer: the connection waits in a listener's queue. A closed peer is gone
 * from the kernel's tables, so the two are told apart.
 */
function waitsOutside(ino: number): boolean {
  return unixPeers().some(([sk, peer]) => sk === 0 && peer === ino);
}

// ---- restore ----

/**
 * Before a relative name is bound or connected to: the task enters the
 * directory it was relative to (the process's own cwd is set later, with
 * the rest of its state).
 */
export function enterUnixDir(rt: RemoteTask, dir: string | undefined): void {
  if (!dir) return;
  rt.sc.check(`chdir(${dir})`, SYS.chdir, rt.put(Buffer.from(`${dir}\0`)));
}

/** Where tsnap finds a stale socket file of a name before binding it again. */
export function unixStalePath(s: SocketImage, path: string): string {
  return s.dir && !path.startsWith('/') ? join(s.dir, path) : path;
}

/**
 * A send buffer for `bytes` in flight. SO_SNDBUFFORCE needs CAP_NET_ADMIN;
 * without it SO_SNDBUF, which net.core.wmem_max caps (a queue bigger than
 * that then fails to go back, naming the fd).
 */
function roomFor(fd: number, bytes: number): void {
  const size = Math.min(2 * bytes + 65536, 0x3fffffff);
  try {
    setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, size, 'setsockopt(SO_SNDBUFFORCE)');
  } catch (err) {
    if (!(err instanceof SysError && err.code === 'EPERM')) throw err;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, size, 'setsockopt(SO_SNDBUF)');
  }
}

/** A copy of a socket of the restored task, with room for `bytes` in flight. */
function sender(pidfd: number, fd: number, bytes: number): number {
  const mine = pidfdGetfd(pidfd, fd);
  // Queued data is charged to the sender until read: make room for all of it.
  if (bytes > 0) roomFor(mine, bytes);
  return mine;
}

function writeAll(fd: number, msgs: Buffer[], what: string): void {
  for (const m of msgs) {
    let n: number;
    try { n = sendNoWait(fd, m); } catch (err) {
      throw new TsnapError('restoreFailed', `${what}: the queued data does not fit back (${(err as Error).message})`, err);
    }
    if (n !== m.length) throw new TsnapError('restoreFailed', `${what}: only ${n} of ${m.length} queued bytes fit back`);
  }
}

/**
 * A unix socket whose peer was closed: a new pair, the queue written back
 * through the other end, which is closed. `reset`: a byte left unread in
 * the closed end makes the kernel report ECONNRESET to the survivor.
 */
export function restorePeerClosed(rt: RemoteTask, group: FdImage[], floor: number): void {
  const f = group[0];
  const s = f.socket!;
  const what = `fd ${f.fd} (unix socket whose peer was closed)`;
  const at = rt.put(Buffer.alloc(8));
  rt.sc.check('socketpair', SYS.socketpair, AF_UNIX, s.type | O_CLOEXEC, 0, at);
  const fds = rt.get(8);
  const [mine, other] = [fds.readInt32LE(0), fds.readInt32LE(4)];
  applySocketOptions(s, (level, opt, value) => rt.sc.check(`setsockopt(${level}, ${opt})`, SYS.setsockopt, mine, level, opt, rt.put(value, 1024), value.length));
  const queued = s.queued ?? [];
  const pidfd = pidfdOpen(rt.pid);
  try {
    const from = sender(pidfd, other, queued.reduce((n, q) => n + q.length, 0));
    try { writeAll(from, queued, what); } finally { closeSync(from); }
    if (s.reset) {
      const back = sender(pidfd, mine, 1);
      try { writeAll(back, [Buffer.from([0])], what); } finally { closeSync(back); }
    }
  } finally {
    closeSync(pidfd);
  }
  // Kept a while when files in flight must be sent again from it (scm-rights.ts).
  if (!keepPeerForRequeue(rt, s, other, floor)) rt.close(other);
  if (f.flags & O_NONBLOCK) rt.sc.check('fcntl(F_SETFL)', SYS.fcntl, mine, F_SETFL, O_NONBLOCK);
  placeFds(rt, [{ tmp: mine, targets: group }], floor);
}

/**
 * The queue of a named datagram socket (bound, not yet connected: a
 * connected one takes datagrams from its peer only), sent again to its
 * name from a socket of tsnap's. A relative name is reached through the
 * task's cwd, which enterUnixDir set to its directory.
 */
export function refillUnixQueue(rt: RemoteTask, s: SocketImage, what: string): void {
  const q = s.queued ?? [];
  if (q.length === 0) return;
  const path = unixPathOf(s.local);
  let to = Buffer.from(s.local);
  if (path && !path.startsWith('/')) {
    const via = `/proc/${rt.pid}/cwd/${path}`;
    to = Buffer.alloc(2 + Buffer.byteLength(via) + 1);
    to.writeUInt16LE(AF_UNIX, 0);
    to.write(via, 2);
    if (to.length > 110) throw new TsnapError('restoreFailed', `${what}: the name ${path} is too long to queue its datagrams again`);
  }
  const sk = rawSyscall('socket(AF_UNIX)', SYS.socket, AF_UNIX, SOCK_DGRAM | O_CLOEXEC | O_NONBLOCK, 0);
  try {
    roomFor(sk, q.reduce((n, m) => n + m.length + 1024, 0));
    for (const m of q) {
      try {
        sendToAddr(sk, m, to);
      } catch (err) {
        throw new TsnapError('restoreFailed', `${what}: cannot queue its ${q.length} datagram(s) again: ${(err as Error).message}`, err);
      }
    }
  } finally {
    rawSyscall('close', SYS.close, sk);
  }
}

/**
 * Once every socket of the tree exists: the unix sockets this process
 * created that were connected by name connect again (in fd order: a
 * listener's queue comes back in that order). `created(f)`: the socket was
 * made here, at fd `f.fd`, not imported from another process.
 */
export function connectUnixPeers(rt: RemoteTask, fds: FdImage[], created: (f: FdImage) => boolean): void {
  const done = new Set<number>();
  for (const f of [...fds].sort((a, b) => a.fd - b.fd)) {
    const s = f.socket;
    if (!s || s.family !== AF_UNIX || s.state !== 'bound' || !s.peer || !created(f)) continue;
    if (f.ofd !== undefined) {
      if (done.has(f.ofd)) continue;
      done.add(f.ofd);
    }
    enterUnixDir(rt, s.peerDir);
    const r = rt.sc.call(SYS.connect, f.fd, rt.put(s.peer), s.peer.length);
    if (r < 0n) {
      const err = new SysError('connect', Number(-r));
      throw new TsnapError('restoreFailed', `fd ${f.fd} (unix socket): cannot connect to ${describeName(s.peer)} again: ${err.code}`, err);
    }
  }
}

/** Self-check: what sock_diag shows of a restored unix socket's connection and name, against its image. */
export function checkUnixLink(f: FdImage, d: UnixDiag): string | null {
  const s = f.socket!;
  const at = `fd ${f.fd} (${f.link})`;
  if (s.state === 'peer-closed' && d.peer !== 0) return `${at}: its peer should be closed, sock_diag shows ${d.peer === null ? 'no peer' : `socket:[${d.peer}]`}`;
  // A client waiting in a listener's queue has a peer without a file (inode 0).
  if ((s.state === 'pair' && !d.peer) || (s.state === 'bound' && s.peer && d.peer === null)) return `${at}: not connected, the image's socket is`;
  // A stream's unread bytes, as sock_diag counts them (a datagram queue shows only its first datagram there).
  if (s.type === SOCK_STREAM && (s.state === 'pair' || s.state === 'peer-closed')) {
    // Bytes of messages carrying files in flight (scm-rights.ts) count too.
    const want = (s.queued ?? []).reduce((n, q) => n + q.length, 0) + (s.scm?.messages ?? []).reduce((n, m) => n + m.data.length, 0);
    if (d.rq !== want) return `${at}: ${d.rq} bytes queued to read, the image's ${want}`;
  }
  if ((s.state === 'bound' || s.state === 'listening') && s.local.length > 2) {
    const name = d.name ?? Buffer.alloc(0);
    if (!name.equals(s.local.subarray(2, 2 + name.length)) || s.local.subarray(2 + name.length).some((b) => b !== 0)) {
      return `${at}: bound to ${describeName(Buffer.concat([s.local.subarray(0, 2), name]))}, the image's ${describeName(s.local)}`;
    }
  }
  return null;
}

/**
 * Established TCP connections (dump --tcp-established), through the
 * kernel's TCP repair mode.
 *
 * Dump puts the socket in repair mode (on tsnap's pidfd_getfd copy, which
 * is the same socket) and reads what the kernel needs to rebuild it: both
 * queues' sequence numbers and contents (the send queue includes data sent
 * but not yet acknowledged), MSS, window scaling, SACK, timestamps and the
 * window state. A socket in repair mode neither sends nor answers, and
 * closes without a RST or FIN, so killing the dumped process leaves the
 * peer waiting; a resumed process (--leave-running, or any failure) gets
 * repair mode switched off again.
 *
 * Restore creates the socket inside the new process, takes a copy, and
 * from tsnap: repair mode on, sequence numbers, bind, connect (no SYN in
 * repair mode), options, buffer sizes, queued data, window. Repair mode
 * stays on until the whole restore succeeded (resumeConnections(), right
 * before the processes start): a restore that fails closes its sockets as
 * silently as the dump did, and both ends of a connection inside the image
 * exist before either speaks.
 *
 * From the freeze until the restored connection speaks, its packets are
 * dropped by netfilter rules (tcp-lock.ts): the peer retransmits into
 * silence instead of being acknowledged by a socket about to vanish, or
 * reset by a host without one.
 *
 * Not handled: urgent data and TCP-MD5/AO keys are not carried over.
 */
import { closeSync } from 'node:fs';
import {
  Guardian, SOL_SOCKET, SO,
  setsockopt, getsockoptBuf, getsockoptInt, ioctlInt, recvPeek, sendSome, bindSocket, connectSocket,
  pidfdOpen, pidfdGetfd, getsockname, getpeername, SysError, SYS, O_CLOEXEC, O_NONBLOCK, rawSyscall, sendRawTcp, AF_INET,
} from '../sys/index.js';
import type { FdImage, TcpImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { placeFds } from './place.js';
import { applySocketOptions } from './socket-options.js';
import { hold, unhold, type Releasable } from '../freeze/safety-net.js';
import { TsnapError } from '../errors.js';
import { faultPoint } from '../fault-points.js';
import { lockConnection, unlock, handToImage, unlockImageConnection, checkLockTool, REPLAY_MARK, type Lock } from './tcp-lock.js';
import { tcpStateName, closedTcp, restoreSocket } from './socket.js';

const IPPROTO_TCP = 6;
const TCP_MAXSEG = 2;
const TCP_INFO = 11;
const TCP_REPAIR = 19;
const TCP_REPAIR_QUEUE = 20;
const TCP_QUEUE_SEQ = 21;
const TCP_REPAIR_OPTIONS = 22;
const TCP_TIMESTAMP = 24;
const TCP_REPAIR_WINDOW = 29;
const TCP_REPAIR_ON = 1;
const TCP_REPAIR_OFF = 0;
const TCP_REPAIR_OFF_NO_WP = -1;
const TCP_RECV_QUEUE = 1;
const TCP_SEND_QUEUE = 2;
const TCP_NO_QUEUE = 0;
const TCPI_OPT_TIMESTAMPS = 1;
const TCPI_OPT_SACK = 2;
const TCPI_OPT_WSCALE = 4;
const TCPOPT_MSS = 2;
const TCPOPT_WINDOW = 3;
const TCPOPT_SACK_PERM = 4;
const TCPOPT_TIMESTAMP = 8;
const SIOCINQ = 0x541b;
const SIOCOUTQ = 0x5411;
const TCP_ESTABLISHED = 1;
const SO_SNDBUFFORCE = 32;
const SO_RCVBUFFORCE = 33;
const MSG_DONTWAIT = 0x40;

/**
 * Sockets one dump session put in repair mode, as its own copies. Each
 * frozen set owns one (attached to it: src/dump/session.ts), so that two
 * dumps in one process never end each other's repair mode; the set's end
 * either lets them be closed with their processes (killed) or switches
 * repair mode off again; tsnap's exit does the latter for any left over. The guardian holds a copy of each too, taken before repair
 * mode is switched on: should tsnap die, it switches repair off, so a
 * connection is never left frozen for its peer.
 */
export class RepairSession implements Releasable {
  private readonly copies: { fd: number; guard: bigint; lock: Lock | null; reuseAddr: boolean }[] = [];
  /** Locks handed to the image by forget(), for a migration to remove once the receiver is done. */
  private handed: { id: string; local: Buffer; peer: Buffer }[] = [];

  /** Call before switching repair mode on. */
  add(copy: number): { lockWith: (local: Buffer, peer: Buffer) => Lock } {
    const guard = Guardian.get().holdRepair(copy);
    if (this.copies.length === 0) hold(this);
    // Repair mode takes the port over (and leaving it clears SO_REUSEADDR): kept to put back.
    const entry = { fd: copy, guard, lock: null as Lock | null, reuseAddr: getsockoptInt(copy, SOL_SOCKET, SO.REUSEADDR) !== 0 };
    this.copies.push(entry);
    return { lockWith: (local, peer) => (entry.lock = lockConnection(local, peer)) };
  }

  /** The process lives on: repair mode off, without a window probe (nothing happened, as far as the peer knows), unlocked. */
  release(): void {
    for (const c of this.copies.splice(0)) {
      try {
        setsockopt(c.fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
        if (c.reuseAddr) setsockopt(c.fd, SOL_SOCKET, SO.REUSEADDR, 1);
      } catch { /* closed meanwhile */ }
      if (c.lock) { try { unlock(c.lock); } catch { /* the guardian runs the unlock when tsnap ends */ } }
      this.close(c);
    }
    unhold(this);
  }

  /**
   * The process is being killed: its sockets close in repair mode,
   * silently, and their locks pass to the image, for its restore to lift.
   */
  forget(): void {
    for (const c of this.copies.splice(0)) {
      if (c.lock) {
        try {
          handToImage(c.lock);
          this.handed.push({ id: c.lock.id, local: Buffer.from(c.lock.local), peer: Buffer.from(c.lock.peer) });
        } catch { /* the guardian unlocks: the connection is lost, but no rule is left */ }
      }
      this.close(c);
    }
    unhold(this);
  }

  /** A migration whose receiver is done (or failed): the locks forget() handed on are lifted here. */
  settle(): void {
    for (const h of this.handed.splice(0)) {
      try { unlockImageConnection(h.id, h.local, h.peer); } catch { /* best effort */ }
    }
  }

  private close(c: { fd: number; guard: bigint }): void {
    try { closeSync(c.fd); } catch { /* closed */ }
    try { Guardian.get().dropRepair(c.guard); } catch { /* the guardian is gone: nothing to drop */ }
  }
}

/**
 * Reads a connected TCP socket for restore. With `enter` false (the check
 * before the freeze) it only makes sure it could: the process is running.
 */
export function describeTcp(pidfd: number, fd: number, enter: boolean, repair: RepairSession | undefined): TcpImage | null {
  const s = pidfdGetfd(pidfd, fd);
  let kept = false;
  try {
    const info = getsockoptBuf(s, IPPROTO_TCP, TCP_INFO, 8);
    if (info[0] !== TCP_ESTABLISHED && !HALF_CLOSED.has(info[0])) {
      throw new TsnapError('unsupported', `fd ${fd} is a TCP connection in state ${tcpStateName(info[0])}; only established and half-closed connections (FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING) can be repaired`);
    }
    if (!enter) {
      checkLockTool(getsockname(s));
      return null;
    }
    // Only a dump session (whose end takes the sockets out of repair mode) may enter it.
    if (!repair) throw new TsnapError('internal', `fd ${fd}: a TCP connection was read for the image outside a dump session. Please report this`);
    const session = repair.add(s);
    kept = true;
    const local = getsockname(s);
    const peer = getpeername(s)!;
    // Silence first: nothing the peer sends from now on is acknowledged and then lost.
    const lock = session.lockWith(local, peer);
    faultPoint('tcp-locked');
    try {
      setsockopt(s, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON, 'setsockopt(TCP_REPAIR)');
    } catch (err) {
      if (err instanceof SysError && err.code === 'EPERM') throw new TsnapError('permission', `fd ${fd}: TCP repair mode needs CAP_NET_ADMIN`, err);
      throw err;
    }
    faultPoint('tcp-repair');
    const queue = (q: number, size: number) => {
      setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, q);
      const seq = getsockoptInt(s, IPPROTO_TCP, TCP_QUEUE_SEQ) >>> 0;
      const data = size > 0 ? recvPeek(s, size) : Buffer.alloc(0);
      return { seq, data };
    };
    // Still the state, now that nothing moves: a FIN may have come since the first look.
    const state = getsockoptBuf(s, IPPROTO_TCP, TCP_INFO, 1)[0];
    if (state !== info[0]) info[0] = state;
    if (state !== TCP_ESTABLISHED && !HALF_CLOSED.has(state)) throw new TsnapError('unsupported', `fd ${fd} is a TCP connection in state ${tcpStateName(state)}, which cannot be repaired`);
    // SIOCOUTQ counts our FIN; the queue read holds data only.
    const inq = ioctlInt(s, SIOCINQ, 'ioctl(SIOCINQ)');
    const outq = ioctlInt(s, SIOCOUTQ, 'ioctl(SIOCOUTQ)');
    const recv = queue(TCP_RECV_QUEUE, inq);
    const send = queue(TCP_SEND_QUEUE, outq);
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
    const options = info[5];
    const timestamps = (options & TCPI_OPT_TIMESTAMPS) !== 0;
    return {
      local,
      peer,
      recvSeq: recv.seq, recvQueue: recv.data,
      sendSeq: send.seq, sendQueue: send.data,
      mss: getsockoptInt(s, IPPROTO_TCP, TCP_MAXSEG),
      sack: (options & TCPI_OPT_SACK) !== 0,
      wscale: (options & TCPI_OPT_WSCALE) !== 0 ? { snd: info[6] & 0xf, rcv: info[6] >> 4 } : null,
      timestamp: timestamps ? getsockoptInt(s, IPPROTO_TCP, TCP_TIMESTAMP) >>> 0 : null,
      window: Buffer.from(getsockoptBuf(s, IPPROTO_TCP, TCP_REPAIR_WINDOW, 20)),
      sndbuf: getsockoptInt(s, SOL_SOCKET, SO.SNDBUF),
      rcvbuf: getsockoptInt(s, SOL_SOCKET, SO.RCVBUF),
      lock: lock.id,
      ...(info[0] !== TCP_ESTABLISHED ? { state: info[0] } : {}),
    };
  } finally {
    if (!kept) closeSync(s);
  }
}

const TCP_FIN_WAIT1 = 4;
const TCP_FIN_WAIT2 = 5;
const TCP_CLOSE_WAIT = 8;
const TCP_LAST_ACK = 9;
const TCP_CLOSING = 11;
/** States past ESTABLISHED whose connection still lives, with the FINs sent so far: restorable. */
const HALF_CLOSED = new Set([TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING]);
const TH_FIN = 0x01;
const TH_ACK = 0x10;
const SHUT_WR = 1;

/**
 * Which FINs a state has seen: ours sent (first, or after the peer's),
 * ours acknowledged, the peer's received.
 */
function finsOf(state: number): { oursSent: boolean; oursFirst: boolean; oursAcked: boolean; peerSent: boolean } {
  return {
    oursSent: [TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSING, TCP_LAST_ACK].includes(state),
    oursFirst: [TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSING].includes(state),
    oursAcked: state === TCP_FIN_WAIT2,
    peerSent: [TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING].includes(state),
  };
}

/** Whether a restored connection gets its send queue only as it leaves repair mode (restoreTcp): an established one. */
export function sendQueueAtResume(t: TcpImage): boolean {
  return !finsOf(t.state ?? TCP_ESTABLISHED).oursSent && t.sendQueue.length > 0;
}

/** What the FINs of a state add to the queue sizes /proc shows: ours until acknowledged, the peer's until read. */
export function finCounts(state: number): { tx: number; rx: number } {
  const f = finsOf(state);
  return { tx: f.oursSent && !f.oursAcked ? 1 : 0, rx: f.peerSent ? 1 : 0 };
}

function ipOf(sa: Buffer): { ip: Buffer; port: number } {
  const port = sa.readUInt16BE(2);
  if (sa.readUInt16LE(0) === AF_INET) return { ip: Buffer.from(sa.subarray(4, 8)), port };
  const a = sa.subarray(8, 24);
  const mapped = a.subarray(0, 10).every((b) => b === 0) && a[10] === 0xff && a[11] === 0xff;
  return { ip: Buffer.from(mapped ? a.subarray(12, 16) : a), port };
}

/**
 * Brings a connection rebuilt as established (in repair mode) to its
 * half-closed state, the way it got there: our FIN through shutdown()
 * (counted as sent when the peer had acknowledged it), the peer's FIN and
 * its acknowledgement of ours as segments replayed from the peer's
 * address, marked so that the lock lets them in. `rcvNxt`, `sndNxt`: the
 * sequence numbers before any FIN. Checks that the kernel got there.
 */
function replayFins(s: number, fd: number, t: TcpImage, fin: ReturnType<typeof finsOf>, rcvNxt: number, sndNxt: number): void {
  const ourFin = (acked: boolean) => {
    if (acked) setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
    rawSyscall('shutdown(SHUT_WR)', SYS.shutdown, s, SHUT_WR);
    if (acked) setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
  };
  const peer = ipOf(t.peer);
  const local = ipOf(t.local);
  const sndWnd = t.window.length >= 8 ? t.window.readUInt32LE(4) >>> (t.wscale?.snd ?? 0) : 0xffff;
  // What the peer had acknowledged of ours: all but what is still queued (and our FIN, unless acknowledged).
  const una = (sndNxt - t.sendQueue.length) >>> 0;
  if (fin.oursFirst) ourFin(fin.oursAcked);
  if (fin.peerSent) sendRawTcp(peer, local, rcvNxt, una, TH_FIN | TH_ACK, sndWnd, REPLAY_MARK);
  if (fin.oursSent && !fin.oursFirst) ourFin(false);
  if (fin.oursAcked) sendRawTcp(peer, local, rcvNxt, (sndNxt + 1) >>> 0, TH_ACK, sndWnd, REPLAY_MARK);
  const want = t.state!;
  let now = -1;
  for (let i = 0; i < 200; i++) {
    now = getsockoptBuf(s, IPPROTO_TCP, TCP_INFO, 1)[0];
    if (now === want) return;
    sleepMs(5);
  }
  throw new TsnapError('restoreFailed', `fd ${fd}: the TCP connection did not come back in state ${tcpStateName(want)} (it is ${tcpStateName(now)}); the replayed FIN or ACK was not taken`);
}

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * restore --tcp-close: the connection is given up and comes back as a
 * closed socket (read gives 0, write EPIPE), as after a reset; the lock
 * the dump left for it goes.
 */
export function restoreTcpClosed(rt: RemoteTask, group: FdImage[], floor: number): void {
  const k = group[0].socket!;
  if (k.tcp?.lock) unlockImageConnection(k.tcp.lock, k.tcp.local, k.tcp.peer);
  const closed = closedTcp(k);
  restoreSocket(rt, group.map((f) => ({ ...f, socket: closed })), floor);
}

/** Restored connections still in repair mode, on tsnap's copies, until resumeConnections(). */
const pending: { copy: number; fd: number; reuseAddr: boolean; tcp: TcpImage; sendLater: boolean }[] = [];

/**
 * Puts a queue back in repair mode. The receive queue goes in one skb per
 * send, which the kernel may refuse when large (ENOMEM): smaller pieces then.
 */
function fillQueue(s: number, data: Buffer, what: string): void {
  let chunk = data.length;
  for (let at = 0; at < data.length;) {
    const n = Math.min(chunk, data.length - at);
    try {
      at += rawSend(s, data, at, n);
    } catch (err) {
      if (err instanceof SysError && (err.code === 'ENOMEM' || err.code === 'EAGAIN') && chunk > 1024) { chunk >>= 1; continue; }
      throw new TsnapError('restoreFailed', `the ${what} queue of a TCP connection does not fit back (${at} of ${data.length} bytes): ${(err as Error).message}`, err);
    }
  }
}

/** Rebuilds one connection inside the new process, left in repair mode. */
export function restoreTcp(rt: RemoteTask, group: FdImage[], floor: number): void {
  const f = group[0];
  const k = f.socket!;
  const t = k.tcp!;
  const tmp = Number(rt.sc.check('socket(tcp)', SYS.socket, k.family, k.type | O_CLOEXEC, k.protocol));
  const pidfd = pidfdOpen(rt.pid);
  let s = -1;
  try {
    s = pidfdGetfd(pidfd, tmp);
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON, 'setsockopt(TCP_REPAIR)');
    applySocketOptions(k, (level, opt, value) => setsockopt(s, level, opt, value, `setsockopt(${level}, ${opt})`));
    // The sequence numbers read at dump follow the queued data; putting the
    // data back advances them again: start from where the queues began.
    // A FIN counts one in the sequence numbers and is replayed below.
    const fin = finsOf(t.state ?? TCP_ESTABLISHED);
    const recvStart = t.recvSeq - (fin.peerSent ? 1 : 0) - t.recvQueue.length;
    const sendStart = t.sendSeq - (fin.oursSent ? 1 : 0) - t.sendQueue.length;
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
    setsockopt(s, IPPROTO_TCP, TCP_QUEUE_SEQ, recvStart | 0);
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
    setsockopt(s, IPPROTO_TCP, TCP_QUEUE_SEQ, sendStart | 0);
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
    try {
      bindSocket(s, t.local);
      connectSocket(s, t.peer);
    } catch (err) {
      throw new TsnapError('restoreFailed', `fd ${f.fd}: the TCP connection cannot be re-established (${(err as Error).message}); is the original process still running?`, err);
    }
    const opts: [number, number][] = [[TCPOPT_MSS, t.mss]];
    if (t.wscale) opts.push([TCPOPT_WINDOW, t.wscale.snd | (t.wscale.rcv << 16)]);
    if (t.sack) opts.push([TCPOPT_SACK_PERM, 0]);
    if (t.timestamp !== null) opts.push([TCPOPT_TIMESTAMP, 0]);
    const ob = Buffer.alloc(8 * opts.length);
    opts.forEach(([code, val], i) => { ob.writeUInt32LE(code, i * 8); ob.writeUInt32LE(val >>> 0, i * 8 + 4); });
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR_OPTIONS, ob, 'setsockopt(TCP_REPAIR_OPTIONS)');
    if (t.timestamp !== null) setsockopt(s, IPPROTO_TCP, TCP_TIMESTAMP, t.timestamp | 0, 'setsockopt(TCP_TIMESTAMP)');
    // Room for the queues while they are filled (the kernel charges more
    // than the bytes), then the sizes the connection had.
    setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, Math.max(t.sndbuf ?? 0, 2 * t.sendQueue.length + (1 << 20)), 'setsockopt(SO_SNDBUFFORCE)');
    setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, Math.max(t.rcvbuf ?? 0, 2 * t.recvQueue.length + (1 << 20)), 'setsockopt(SO_RCVBUFFORCE)');
    // Data queued to send in repair mode counts as sent and arms the
    // retransmit timer, which backs off while the connection is locked: an
    // established connection gets it right before it leaves repair mode
    // (resumeConnections), so the first retransmit comes at once. A
    // half-closed one needs it before its FIN is replayed.
    const sendLater = sendQueueAtResume(t);
    if (t.sendQueue.length && !sendLater) {
      setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
      fillQueue(s, t.sendQueue, 'send');
    }
    if (t.recvQueue.length) {
      setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
      fillQueue(s, t.recvQueue, 'receive');
    }
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
    // getsockopt reports twice what setsockopt was given.
    if (t.sndbuf && !sendLater) setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, t.sndbuf >> 1, 'setsockopt(SO_SNDBUFFORCE)');
    if (t.rcvbuf) setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, t.rcvbuf >> 1, 'setsockopt(SO_RCVBUFFORCE)');
    const window = Buffer.from(t.window);
    if (fin.peerSent && window.length >= 20) {
      // The peer's FIN, replayed, must fall inside the window it had before it came.
      window.writeUInt32LE((window.readUInt32LE(16) - 1) >>> 0, 16);
      window.writeUInt32LE((window.readUInt32LE(12) + 1) >>> 0, 12);
    }
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR_WINDOW, window, 'setsockopt(TCP_REPAIR_WINDOW)');
    if (t.state !== undefined && t.state !== TCP_ESTABLISHED) replayFins(s, f.fd, t, fin, recvStart + t.recvQueue.length, sendStart + t.sendQueue.length);
    pending.push({ copy: s, fd: f.fd, reuseAddr: k.reuseAddr, tcp: t, sendLater });
    s = -1;
  } finally {
    if (s >= 0) closeSync(s);
    closeSync(pidfd);
  }
  if (f.flags & O_NONBLOCK) rt.sc.check('fcntl(F_SETFL)', SYS.fcntl, tmp, 4, O_NONBLOCK);
  placeFds(rt, [{ tmp, targets: group }], floor);
}

/**
 * The restore succeeded: each connection is unlocked and leaves repair
 * mode with a window probe, so the peer learns at once that it lives.
 * Leaving repair mode clears the socket's claim to share its port
 * (listeners of the port bound while it held it): SO_REUSEADDR goes back
 * as it was.
 */
export function resumeConnections(): void {
  // Every lock first: a failure here still leaves every connection silent (abandonConnections).
  for (const p of pending) if (p.tcp.lock) unlockImageConnection(p.tcp.lock, p.tcp.local, p.tcp.peer);
  for (const p of pending) {
    if (p.sendLater) {
      setsockopt(p.copy, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
      fillQueue(p.copy, p.tcp.sendQueue, 'send');
      setsockopt(p.copy, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
      // getsockopt reports twice what setsockopt was given.
      if (p.tcp.sndbuf) setsockopt(p.copy, SOL_SOCKET, SO_SNDBUFFORCE, p.tcp.sndbuf >> 1, 'setsockopt(SO_SNDBUFFORCE)');
    }
    setsockopt(p.copy, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF, `setsockopt(fd ${p.fd}, TCP_REPAIR off)`);
    if (p.reuseAddr) setsockopt(p.copy, SOL_SOCKET, SO.REUSEADDR, 1);
  }
  for (const p of pending.splice(0)) closeSync(p.copy);
}

/**
 * The restore failed: the sockets made so far die in repair mode with
 * their process, and the locks of every connection of the image go
 * (`fds`: all of them, made or not), so that no rule outlives the attempt.
 */
export function abandonConnections(fds: FdImage[]): void {
  for (const p of pending.splice(0)) {
    try { closeSync(p.copy); } catch { /* closed */ }
  }
  for (const f of fds) {
    const t = f.socket?.tcp;
    if (t?.lock) { try { unlockImageConnection(t.lock, t.local, t.peer); } catch { /* best effort */ } }
  }
}

function rawSend(s: number, data: Buffer, at: number, n: number): number {
  return sendSome(s, data, at, n, MSG_DONTWAIT);
}

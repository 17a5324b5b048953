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
 * repair mode), options, the receive queue, window; once every socket of
 * the image exists, the send queue and repair mode off (leaveTcpRepair).
 *
 * Not handled: packets the peer sends while the process is frozen may be
 * acknowledged by the frozen socket and then lost (CRIU blocks them with a
 * firewall rule; tsnap does not yet). Urgent data and TCP-MD5/AO keys are
 * not carried over.
 */
import { closeSync } from 'node:fs';
import {
  Guardian, SOL_SOCKET, SO,
  setsockopt, getsockoptBuf, getsockoptInt, ioctlInt, recvPeek, sendAll, bindSocket, connectSocket,
  pidfdOpen, pidfdGetfd, getsockname, getpeername, SysError, SYS, O_CLOEXEC, O_NONBLOCK,
} from '../sys/index.js';
import type { FdImage, TcpImage } from '../../formats/schema.js';
import type { RemoteTask } from '../restore/remote-task.js';
import { placeFds } from './place.js';
import { applySocketOptions } from './socket-options.js';
import { hold, unhold, type Releasable } from '../freeze/safety-net.js';
import { TsnapError } from '../errors.js';
import { faultPoint } from '../fault-points.js';

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

/**
 * Sockets this tsnap put in repair mode, as its own copies. Whoever ends
 * the dump either lets them be closed with their process (killed) or
 * switches repair mode off again; tsnap's exit does the latter for any
 * left over. The guardian holds a copy of each too, taken before repair
 * mode is switched on: should tsnap die, it switches repair off, so a
 * connection is never left frozen for its peer.
 */
class RepairSession implements Releasable {
  private readonly copies: { fd: number; guard: bigint; reuseAddr: boolean }[] = [];

  /** Call before switching repair mode on. */
  add(copy: number): void {
    // Leaving repair mode clears SO_REUSEADDR: remembered to be set back.
    const reuseAddr = getsockoptInt(copy, SOL_SOCKET, SO.REUSEADDR) !== 0;
    const guard = Guardian.get().holdRepair(copy);
    if (this.copies.length === 0) hold(this);
    this.copies.push({ fd: copy, guard, reuseAddr });
  }

  /** The process lives on: repair mode off, without a window probe (nothing happened, as far as the peer knows). */
  release(): void {
    for (const c of this.copies.splice(0)) {
      try {
        setsockopt(c.fd, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
        if (c.reuseAddr) setsockopt(c.fd, SOL_SOCKET, SO.REUSEADDR, 1);
      } catch { /* closed meanwhile */ }
      this.close(c);
    }
    unhold(this);
  }

  /** The process is being killed: its sockets close in repair mode, silently. */
  forget(): void {
    for (const c of this.copies.splice(0)) this.close(c);
    unhold(this);
  }

  private close(c: { fd: number; guard: bigint; reuseAddr: boolean }): void {
    try { closeSync(c.fd); } catch { /* closed */ }
    try { Guardian.get().dropRepair(c.guard); } catch { /* the guardian is gone: nothing to drop */ }
  }
}

export const tcpRepair = new RepairSession();

/**
 * Reads a connected TCP socket for restore. With `enter` false (the check
 * before the freeze) it only makes sure it could: the process is running.
 */
export function describeTcp(pidfd: number, fd: number, enter: boolean): TcpImage | null {
  const s = pidfdGetfd(pidfd, fd);
  let kept = false;
  try {
    const info = getsockoptBuf(s, IPPROTO_TCP, TCP_INFO, 8);
    if (info[0] !== TCP_ESTABLISHED) {
      throw new TsnapError('unsupported', `fd ${fd} is a TCP connection in state ${info[0]} (not established); only established connections can be repaired`);
    }
    if (!enter) return null;
    tcpRepair.add(s);
    kept = true;
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
    const inq = ioctlInt(s, SIOCINQ, 'ioctl(SIOCINQ)');
    const outq = ioctlInt(s, SIOCOUTQ, 'ioctl(SIOCOUTQ)');
    const recv = queue(TCP_RECV_QUEUE, inq);
    const send = queue(TCP_SEND_QUEUE, outq);
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
    const options = info[5];
    const timestamps = (options & TCPI_OPT_TIMESTAMPS) !== 0;
    return {
      local: getsockname(s),
      peer: getpeername(s)!,
      recvSeq: recv.seq, recvQueue: recv.data,
      sendSeq: send.seq, sendQueue: send.data,
      mss: getsockoptInt(s, IPPROTO_TCP, TCP_MAXSEG),
      sack: (options & TCPI_OPT_SACK) !== 0,
      wscale: (options & TCPI_OPT_WSCALE) !== 0 ? { snd: info[6] & 0xf, rcv: info[6] >> 4 } : null,
      timestamp: timestamps ? getsockoptInt(s, IPPROTO_TCP, TCP_TIMESTAMP) >>> 0 : null,
      window: Buffer.from(getsockoptBuf(s, IPPROTO_TCP, TCP_REPAIR_WINDOW, 20)),
    };
  } finally {
    if (!kept) closeSync(s);
  }
}

/**
 * Once every fd of the image exists: the send queue is put back and the
 * connection leaves repair mode, with a window probe (the peer learns it is alive); leaving clears the
 * port sharing, so SO_REUSEADDR goes back to what the image says.
 */
export function leaveTcpRepair(rt: RemoteTask, f: FdImage): void {
  const t = f.socket!.tcp!;
  const pidfd = pidfdOpen(rt.pid);
  try {
    const s = pidfdGetfd(pidfd, f.fd);
    try {
      if (t.sendQueue.length) {
        // The queue held at dump may exceed the send buffer a new socket
        // starts with (the kernel had grown it): room for all of it.
        if (getsockoptInt(s, SOL_SOCKET, SO.SNDBUF) < 2 * t.sendQueue.length) setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, t.sendQueue.length);
        setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
        sendAll(s, t.sendQueue);
        setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
      }
      setsockopt(s, IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF, 'setsockopt(TCP_REPAIR off)');
      if (f.socket!.reuseAddr) setsockopt(s, SOL_SOCKET, SO.REUSEADDR, 1);
    } finally {
      closeSync(s);
    }
  } finally {
    closeSync(pidfd);
  }
}

/** Rebuilds one established connection inside the new process (left in repair mode). */
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
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
    setsockopt(s, IPPROTO_TCP, TCP_QUEUE_SEQ, (t.recvSeq - t.recvQueue.length) | 0);
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE);
    setsockopt(s, IPPROTO_TCP, TCP_QUEUE_SEQ, (t.sendSeq - t.sendQueue.length) | 0);
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
    if (t.recvQueue.length) {
      setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
      sendAll(s, t.recvQueue);
    }
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
    setsockopt(s, IPPROTO_TCP, TCP_REPAIR_WINDOW, t.window, 'setsockopt(TCP_REPAIR_WINDOW)');
    // The send queue and the end of repair mode wait until every socket of
    // the image exists (leaveTcpRepair): data queued in repair mode counts
    // as sent and arms the retransmit timer, and leaving repair mode sends
    // a window probe; a peer of the same tree not rebuilt yet would answer
    // either with a RST. Meanwhile the port stays shareable, so a listener
    // of the same port can bind.
  } finally {
    if (s >= 0) closeSync(s);
    closeSync(pidfd);
  }
  if (f.flags & O_NONBLOCK) rt.sc.check('fcntl(F_SETFL)', SYS.fcntl, tmp, 4, O_NONBLOCK);
  placeFds(rt, [{ tmp, targets: group }], floor);
}


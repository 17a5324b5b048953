/**
 * Files and credentials in flight in a unix socket pair: sent with
 * SCM_RIGHTS / SCM_CREDENTIALS and not yet received.
 *
 * Dump peeks at the receive queue of tsnap's copy of the socket (MSG_PEEK,
 * with room for ancillary data). A peek consumes nothing, but the kernel
 * does install the files in flight as fds of tsnap: each is then described
 * like any fd (it may be the same open file as an fd of the process, or a
 * file nobody else holds, such as the other end of a pipe) and closed.
 * A socket with SO_PASSCRED shows each message's sender (and on a stream a
 * read stops where the sender changes, for the program as for the peek);
 * without it nobody can read the senders, and the process itself is
 * recorded as each one. (Lending SO_PASSCRED for the peek would leave it
 * set if tsnap were killed meanwhile.)
 *
 * Restore queues each message again, in order, once every file of the
 * image exists: the files in flight were created as fds of the process
 * above all its own numbers; tsnap takes copies of them and of the peer
 * end (pidfd_getfd), sends each message from the peer with SCM_RIGHTS and
 * explicit credentials, then closes those temporary fds.
 */
import { closeSync, fstatSync } from 'node:fs';
import {
  getsockoptInt, peekOffset, setPeekOffset, peekMessage, sendMessage, pidfdOpen, pidfdGetfd,
  SysError, SOL_SOCKET, SYS, F_DUPFD_CLOEXEC, pollHangup, ioctlInt,
} from '../sys/index.js';
import type { FdImage, ScmImage, ScmMessageImage, SocketImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { readFdInfo, readStatus, type FdTarget } from '../proc/index.js';
import { REOPENED } from './regular.js';
import { isReadEnd } from './pipe.js';
import { TsnapError } from '../errors.js';

const POLLERR_ = 8;
const SIOCINQ_ = 0x541b;

const SOCK_STREAM = 1;
const SO_PASSCRED = 16;
const SCM_RIGHTS = 1;
const SCM_CREDENTIALS = 2;
const SCM_SECURITY = 3;
const SCM_PIDFD = 4;
const MSG_TRUNC = 0x20;
const MSG_CTRUNC = 0x8;
/** The most one SCM_RIGHTS message can carry (SCM_MAX_FD). */
const MAX_FDS = 253;
const CMSG_HDR = 16;
/** Room for SCM_MAX_FD fds, credentials, a pidfd and a security label. */
const CONTROL_ROOM = 4096;
const BUF = 1 << 20;

export interface Ucred {
  pid: number;
  uid: number;
  gid: number;
}

/** What the ancillary data of one message holds. */
export interface Control {
  /** SCM_RIGHTS, every cmsg's fds in order (the kernel merges them into one anyway). */
  fds: number[];
  creds: Ucred | null;
  /** fds the kernel installed that are not files in flight (SCM_PIDFD): to be closed. */
  extraFds: number[];
  /** Other cmsg types, by number. */
  others: number[];
}

const align = (n: number) => (n + 7) & ~7;

/** Parses a control buffer (struct cmsghdr records, x86-64). */
export function decodeControl(b: Buffer): Control {
  const out: Control = { fds: [], creds: null, extraFds: [], others: [] };
  for (let at = 0; at + CMSG_HDR <= b.length;) {
    const len = Number(b.readBigUInt64LE(at));
    if (len < CMSG_HDR || at + len > b.length) break;
    const level = b.readInt32LE(at + 8);
    const type = b.readInt32LE(at + 12);
    const data = b.subarray(at + CMSG_HDR, at + len);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      for (let i = 0; i + 4 <= data.length; i += 4) out.fds.push(data.readInt32LE(i));
    } else if (level === SOL_SOCKET && type === SCM_CREDENTIALS && data.length >= 12) {
      out.creds = { pid: data.readInt32LE(0), uid: data.readUInt32LE(4), gid: data.readUInt32LE(8) };
    } else if (level === SOL_SOCKET && type === SCM_PIDFD && data.length >= 4) {
      out.extraFds.push(data.readInt32LE(0));
    } else {
      out.others.push(type);
    }
    at += align(len);
  }
  return out;
}

/** Builds the control buffer of a sendmsg: SCM_RIGHTS (if any fds) then SCM_CREDENTIALS (if any). */
export function encodeControl(fds: number[], creds: Ucred | null): Buffer {
  if (fds.length > MAX_FDS) throw new TsnapError('badImage', `a message in flight carries ${fds.length} files; the kernel takes at most ${MAX_FDS}`);
  const parts: Buffer[] = [];
  const cmsg = (type: number, data: Buffer) => {
    const b = Buffer.alloc(align(CMSG_HDR + data.length));
    b.writeBigUInt64LE(BigInt(CMSG_HDR + data.length), 0);
    b.writeInt32LE(SOL_SOCKET, 8);
    b.writeInt32LE(type, 12);
    data.copy(b, CMSG_HDR);
    parts.push(b);
  };
  if (fds.length) {
    const d = Buffer.alloc(4 * fds.length);
    fds.forEach((fd, i) => d.writeInt32LE(fd, 4 * i));
    cmsg(SCM_RIGHTS, d);
  }
  if (creds) {
    const d = Buffer.alloc(12);
    d.writeInt32LE(creds.pid, 0);
    d.writeUInt32LE(creds.uid >>> 0, 4);
    d.writeUInt32LE(creds.gid >>> 0, 8);
    cmsg(SCM_CREDENTIALS, d);
  }
  return Buffer.concat(parts);
}

/** A peeked message with the files the peek installed in tsnap (`local`). */
interface Peeked {
  data: Buffer;
  local: number[];
  creds: Ucred;
}

/** What a peek of one socket left open in tsnap, until describeInflight() takes it. */
interface Pending {
  messages: Peeked[];
  /** The socket had SO_PASSCRED itself: the program reads the credentials. */
  passcred: boolean;
}

const pending = new WeakMap<ScmImage, Pending>();
/** Every fd peeks installed in tsnap and not yet closed. */
const installed = new Set<number>();

/** Closes every file in flight tsnap still holds from peeks (after each read of the fds, failed or not). */
export function releaseInflight(): void {
  for (const fd of installed) { try { closeSync(fd); } catch { /* closed */ } }
  installed.clear();
}

/** One recvmsg(MSG_PEEK) at peek offset `off` of up to `len` bytes; what the kernel installed is tracked. */
function peekAt(s: number, off: number, len: number, buf: Buffer, ctrl: Buffer): { n: number; flags: number; c: Control } | null {
  setPeekOffset(s, off);
  const r = peekMessage(s, buf, len, ctrl);
  if (!r) return null;
  const c = decodeControl(r.control);
  for (const fd of [...c.fds, ...c.extraFds]) installed.add(fd);
  for (const fd of c.extraFds) { closeSync(fd); installed.delete(fd); }
  return { n: r.n, flags: r.flags, c };
}

function closeLocal(fds: number[]): void {
  for (const fd of fds) { closeSync(fd); installed.delete(fd); }
}

/**
 * The receive queue of tsnap's copy `s` of a unix pair end (`fd` in the
 * process, for messages): plain data when nothing in it needs more (as
 * `queued` always was), or message by message with what is in flight.
 */
export function readPairQueue(s: number, fd: number, type: number): Pick<SocketImage, 'queued' | 'scm'> {
  const what = `fd ${fd} (unix socket)`;
  const passcred = getsockoptInt(s, SOL_SOCKET, SO_PASSCRED) !== 0;
  // A pending socket error (ECONNRESET) is consumed by the first recvmsg that
  // reaches it: a stream is peeked only up to the bytes SIOCINQ counts, and a
  // datagram queue behind one cannot be read without clearing it.
  const errorPending = (pollHangup(s) & POLLERR_) !== 0;
  const inq = errorPending ? ioctlInt(s, SIOCINQ_, 'ioctl(SIOCINQ)') : Infinity;
  if (errorPending && type !== SOCK_STREAM) {
    if (inq > 0) throw new TsnapError('unsupported', `fd ${fd} is a unix socket with a socket error pending and data queued; reading the queue would clear the error, so tsnap cannot take it`);
    return { queued: [] };
  }
  const oldOff = peekOffset(s);
  const messages: Peeked[] = [];
  try {
    const buf = Buffer.alloc(BUF);
    const ctrl = Buffer.alloc(CONTROL_ROOM);
    for (let off = 0; ;) {
      if (off >= inq) break;
      const r = peekAt(s, off, Math.min(BUF, inq - off), buf, ctrl);
      if (!r) break;
      if (r.flags & MSG_CTRUNC || r.c.others.length) {
        throw new TsnapError('unsupported', `${what} has a message in flight with ancillary data tsnap cannot take (${r.c.others.length ? `cmsg type ${r.c.others.join(', ')}${r.c.others.includes(SCM_SECURITY) ? ': a security label' : ''}` : 'more than it has room for'})`);
      }
      if (r.flags & MSG_TRUNC) throw new TsnapError('unsupported', `${what} has a datagram of more than ${BUF} bytes queued; tsnap cannot take it`);
      if (r.n === 0) {
        // End of a stream; a zero-length datagram stays at the head and would be read forever.
        if (r.c.fds.length) {
          closeLocal(r.c.fds);
          throw new TsnapError('unsupported', `${what} has an empty datagram carrying files in flight; tsnap cannot take it`);
        }
        break;
      }
      // Without SO_PASSCRED there are none: describeInflight() names the process.
      const creds = r.c.creds ?? { pid: 0, uid: 0, gid: 0 };
      let data = Buffer.from(buf.subarray(0, r.n));
      if (type === SOCK_STREAM && r.c.fds.length && r.n > 1) {
        // A stream peek glues the writes before the one that carried files
        // (even a 1-byte peek goes on to it), so where that write starts
        // cannot be seen: the files come back with the last byte. That is
        // exact for the usual 1-byte write carrying files; a program that
        // reads part of a longer one gets them with a later read.
        messages.push({ data: data.subarray(0, r.n - 1), local: [], creds });
        data = data.subarray(r.n - 1);
      }
      messages.push({ data, local: r.c.fds, creds });
      off += r.n;
    }
  } finally {
    setPeekOffset(s, oldOff);
  }
  // The kernel counts the files in flight: a peek that missed some (an empty
  // datagram past the head is skipped by peek offsets) must not pass.
  const seen = messages.reduce((n, m) => n + m.local.length, 0);
  const counted = Number(readFdInfo(process.pid, s).extra.scm_fds ?? seen);
  if (counted !== seen) {
    throw new TsnapError('unsupported', `${what} has ${counted} files in flight but tsnap could read ${seen} of them (one rides with an empty datagram?); restore would lose them`);
  }
  if (!passcred && messages.every((m) => m.local.length === 0)) {
    // Nothing more than bytes: a stream comes as one (the program's reads glue it too).
    const data = messages.map((m) => m.data);
    return { queued: type === SOCK_STREAM && data.length > 1 ? [Buffer.concat(data)] : data };
  }
  const scm: ScmImage = { messages: messages.map((m) => ({ data: m.data, fds: [], creds: { ...m.creds } })), files: [] };
  pending.set(scm, { messages, passcred });
  return { queued: [], scm };
}

/** Whether fd image `f` of `pid` is a unix socket pair end with files in flight (fdinfo scm_fds, no peek). */
export function hasFilesInFlight(pid: number, f: FdImage): boolean {
  if (f.socket?.state !== 'pair') return false;
  try {
    return Number(readFdInfo(pid, f.fd).extra.scm_fds ?? 0) > 0;
  } catch {
    return false; // closed meanwhile: the frozen pass sees what is left
  }
}

/** An fd being read for the image (dump/fds.ts SeenFd). */
export interface SeenFile {
  pid: number;
  t: FdTarget;
  img: FdImage;
}

/**
 * Describes one fd of tsnap (`local`) as an fd image, the same way as the
 * process's own fds; `skipQueue`: a socket whose queue the image already
 * has (or will have) through another fd of it. `filesPid`: the process
 * whose fd numbers an epoll names.
 */
export type DescribeLocal = (local: number, skipQueue: boolean, filesPid: number) => SeenFile;

/** Where the files in flight in one socket's queue go: the process that holds the socket. */
export interface InflightOwner {
  owner: SeenFile;
  files: SeenFile[];
}

const DESCRIBED = ['pipe', 'eventfd', 'timerfd', 'signalfd', 'epoll', 'socket', 'fifo', 'memfd'] as const;

/**
 * The files in flight in every socket of `seen` whose queue was peeked:
 * each described (as fds of tsnap: `pid` is tsnap's own in what this
 * returns, so kcmp and /proc/PID/fd reach them) and added to `seen`, so
 * that open files shared with the process's fds, pipe ends and socket pair
 * ends are matched like any others. What restore could not bring back is
 * refused here, naming the fd whose queue holds it.
 */
export function describeInflight(seen: SeenFile[], pids: number[], describe: DescribeLocal): InflightOwner[] {
  const owners: InflightOwner[] = [];
  /** Socket inodes whose queue the image has (held ones, or already described in flight). */
  const held = new Set(seen.filter((s) => s.img.socket).map((s) => s.t.ino));
  const queues = new Set(held);
  const taken = new Set<number>();
  const added: SeenFile[] = [];
  for (const s of [...seen]) {
    const k = s.img.socket;
    if (!k?.scm) continue;
    const p = pending.get(k.scm);
    // A socket on 0-2 whose peer is not in the dump is stdio, not the
    // process's own (dump/fds.ts drops it): so are the files in its queue.
    const stdio = s.img.fd <= 2 && !held.has(k.peerIno!);
    if (!p || taken.has(k.ino!) || stdio) {
      // Another fd of the same socket carries its queue (or nobody does).
      if (p) for (const m of p.messages) closeLocal(m.local);
      delete k.scm;
      continue;
    }
    taken.add(k.ino!);
    const where = `fd ${s.img.fd} of process ${s.pid}`;
    const files: SeenFile[] = [];
    const status = readStatus(s.pid);
    const ids = { uid: status.uid[0], gid: status.gid[0] };
    p.messages.forEach((m, i) => {
      const msg = k.scm!.messages[i];
      normalizeCreds(msg, s.pid, pids, p.passcred, where, ids);
      for (const local of m.local) {
        let f: SeenFile;
        try {
          const ino = describeIno(local);
          f = describe(local, ino !== null && queues.has(ino), s.pid);
          if (f.img.socket) queues.add(f.t.ino);
        } catch (err) {
          if (!(err instanceof TsnapError)) throw err;
          throw new TsnapError(err.kind, `${where} is a unix socket with a file in flight that tsnap cannot restore: ${err.message}`, err);
        }
        checkInflight(f, where);
        files.push(f);
      }
    });
    owners.push({ owner: s, files });
    added.push(...files);
  }
  const all = [...seen, ...added];
  for (const o of owners) for (const f of o.files) checkOtherEnd(f, all, `fd ${o.owner.img.fd} of process ${o.owner.pid}`);
  seen.push(...added);
  return owners;
}

/** The inode of tsnap's fd, or null. */
function describeIno(local: number): number | null {
  try {
    return fstatSync(local).ino;
  } catch {
    return null;
  }
}

function checkInflight(f: SeenFile, where: string): void {
  const img = f.img;
  const what = `${where} is a unix socket with ${img.link} in flight`;
  if (img.socket?.scm) {
    throw new TsnapError('unsupported', `${what}, a unix socket that has files in flight itself; tsnap cannot restore files in flight inside files in flight`);
  }
  if (img.socket?.state === 'established') {
    throw new TsnapError('unsupported', `${what}, an established TCP connection; tsnap cannot restore one in flight`);
  }
  if (REOPENED.has(img.kind) || img.kind === 'pipe') return;
  if (DESCRIBED.some((k) => img[k] !== undefined)) return;
  throw new TsnapError('unsupported', `${what} (a ${img.kind}), which tsnap cannot restore`);
}

/** A pipe or socket pair end in flight needs its other end somewhere in the dump. */
function checkOtherEnd(f: SeenFile, all: SeenFile[], where: string): void {
  if (f.img.kind === 'pipe') {
    const read = isReadEnd(f.img);
    if (!all.some((o) => o.t.kind === 'pipe' && o.t.ino === f.t.ino && isReadEnd(o.img) !== read)) {
      throw new TsnapError('unsupported', `${where} is a unix socket with the ${read ? 'read' : 'write'} end of ${f.img.link} in flight, whose other end is closed; tsnap cannot restore a pipe with one end yet`);
    }
  }
  const k = f.img.socket;
  if (k?.state === 'pair' && !all.some((o) => o.img.socket && o.t.ino === k.peerIno)) {
    throw new TsnapError('unsupported', `${where} is a unix socket with ${f.img.link} in flight, connected to socket:[${k.peerIno}] outside the dump`);
  }
}

/**
 * The credentials restore sends again. A socket without SO_PASSCRED shows
 * none: its process stands for every sender (real uid and gid, as the
 * kernel takes them). With SO_PASSCRED, a sender outside the dump could not
 * be named again.
 */
function normalizeCreds(msg: ScmMessageImage, ownerPid: number, pids: number[], passcred: boolean, where: string, ids: { uid: number; gid: number }): void {
  if (!passcred) {
    msg.creds = { pid: ownerPid, ...ids };
    return;
  }
  if (!pids.includes(msg.creds.pid)) {
    throw new TsnapError('unsupported', `${where} reads its senders' credentials (SO_PASSCRED) and has a message from ${msg.creds.pid ? `process ${msg.creds.pid}, outside the dump` : 'a process it cannot name'} queued; restore could not give that sender's pid again (dump the sender with --tree)`);
  }
}

/**
 * Once every check passed: each file in flight gets the number restore
 * will open it at (above every fd of its process), and the messages name
 * them so. Returns nothing; the images are complete.
 */
export function numberInflight(owners: InflightOwner[], fdsOf: (pid: number) => FdImage[]): void {
  const next = new Map<number, number>();
  for (const o of owners) {
    const pid = o.owner.pid;
    const k = o.owner.img.socket;
    // A socket on 0-2 that turned out to be stdio is not the process's own: nothing to queue.
    if (!k?.scm) continue;
    if (k.state !== 'pair' && k.state !== 'peer-closed') {
      // Restore sends the messages again from the peer end: it must be in the image.
      throw new TsnapError('unsupported', `fd ${o.owner.img.fd} of process ${pid} is a unix socket whose peer is gone (state ${k.state}) with files or credentials in flight; tsnap cannot queue them again without the peer`);
    }
    let n = next.get(pid) ?? Math.max(2, ...fdsOf(pid).map((f) => f.fd)) + 1;
    const scm = k.scm;
    const p = pending.get(scm)!;
    const numbers = new Map<number, number>();
    for (const f of o.files) numbers.set(f.img.fd, n++);
    p.messages.forEach((m, i) => { scm.messages[i].fds = m.local.map((l) => numbers.get(l)!); });
    for (const f of o.files) f.img.fd = numbers.get(f.img.fd)!;
    scm.files = o.files.map((f) => f.img);
    next.set(pid, n);
  }
}

/** The process's fds and the files in flight in its sockets (which restore creates too, for a while). */
export function withInflight(fds: FdImage[]): FdImage[] {
  const more = fds.flatMap((f) => f.socket?.scm?.files ?? []);
  return more.length ? [...fds, ...more] : fds;
}

/** Where an open file is in the restored tree. */
export interface FileAt {
  pid: number;
  fd: number;
}

/** Peer ends made only to send a queue again, by "pid:receiver inode". */
const standIns = new Map<string, FileAt>();

/**
 * For a socket whose peer is gone, restored as a new pair whose other end
 * (`fd` in the task) is then closed: when its queue holds files in flight,
 * that end is kept (above `floor`) to send them from, and closed by
 * requeueInflight(). Returns whether it was kept (the caller must not
 * close it then).
 */
export function keepPeerForRequeue(rt: RemoteTask, s: SocketImage, fd: number, floor: number): boolean {
  if (!s.scm?.messages.length) return false;
  const hi = Number(rt.sc.check(`fcntl(${fd}, F_DUPFD_CLOEXEC)`, SYS.fcntl, fd, F_DUPFD_CLOEXEC, floor));
  rt.close(fd);
  standIns.set(`${rt.pid}:${s.ino}`, { pid: rt.pid, fd: hi });
  return true;
}

/**
 * Queues every message in flight of this process's sockets again, from
 * their peer ends (`endOf(ino)`: where the socket end with that inode is),
 * then closes the temporary fds of the files in flight. `pidNow`: a dumped
 * pid as it is now.
 */
export function requeueInflight(rt: RemoteTask, fds: FdImage[], endOf: (ino: number, peerIno: number) => FileAt | undefined, pidNow: (pid: number) => number): void {
  const owners = fds.filter((f) => f.socket?.scm);
  if (owners.length === 0) return;
  const pidfds = new Map<number, number>();
  const pidfdOf = (pid: number) => {
    let p = pidfds.get(pid);
    if (p === undefined) { p = pidfdOpen(pid); pidfds.set(pid, p); }
    return p;
  };
  try {
    for (const f of owners) {
      const k = f.socket!;
      const scm = k.scm!;
      const what = `fd ${f.fd} (unix socket)`;
      const peer = endOf(k.peerIno!, k.ino!) ?? standIns.get(`${rt.pid}:${k.ino}`);
      if (!peer) throw new TsnapError('badImage', `${what}: the peer socket:[${k.peerIno}] that sent its queue is not in the image`);
      const sender = pidfdGetfd(pidfdOf(peer.pid), peer.fd);
      try {
        for (const [i, m] of scm.messages.entries()) {
          const copies: number[] = [];
          try {
            for (const n of m.fds) copies.push(pidfdGetfd(pidfdOf(rt.pid), n));
            const sent = sendMessage(sender, m.data, encodeControl(copies, { ...m.creds, pid: pidNow(m.creds.pid) }));
            if (sent !== m.data.length) throw new TsnapError('restoreFailed', `${what}: only ${sent} of the ${m.data.length} bytes of message ${i + 1} in flight fit back`);
          } catch (err) {
            if (!(err instanceof SysError)) throw err;
            const hint = err.code === 'EAGAIN' ? ' (the queue is full)' : err.code === 'EPERM' ? ' (tsnap lacks the privilege to send those credentials)' : '';
            throw new TsnapError('restoreFailed', `${what}: cannot queue message ${i + 1} of ${scm.messages.length} in flight again: ${err.message}${hint}`, err);
          } finally {
            for (const c of copies) closeSync(c);
          }
        }
      } finally {
        closeSync(sender);
      }
    }
  } finally {
    for (const p of pidfds.values()) closeSync(p);
  }
  for (const f of owners) for (const g of f.socket!.scm!.files) rt.close(g.fd);
  for (const f of owners) {
    const key = `${rt.pid}:${f.socket!.ino}`;
    const stand = standIns.get(key);
    if (stand) { rt.close(stand.fd); standIns.delete(key); }
  }
}

/**
 * Restore's self-check: the kernel counts the files in flight of each unix
 * socket (fdinfo scm_fds); it must be what the image queued. `fdinfo`:
 * the fdinfo lines of the restored process's fd.
 */
export function checkInflightRestored(fds: FdImage[], fdinfo: (fd: number) => Record<string, string>, out: string[]): void {
  for (const f of fds) {
    const scm = f.socket?.scm;
    if (!scm) continue;
    const want = scm.messages.reduce((n, m) => n + m.fds.length, 0);
    const have = fdinfo(f.fd).scm_fds;
    if (have !== undefined && Number(have) !== want) out.push(`fd ${f.fd} (${f.link}): ${have} files in flight, the image's ${want}`);
  }
}


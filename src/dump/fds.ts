/**
 * The open files of a process, with what each kind needs to be recreated
 * (src/files has one module per kind). Everything that restore could not
 * bring back is refused here, naming the fd, so that a dump never produces
 * an image that fails later; dump() calls this once before freezing (to
 * fail fast, with the process untouched) and again while frozen.
 */
import { closeSync, existsSync } from 'node:fs';
import { pidfdOpen, pidfdGetfd, sameFile, fileOwner, fcntl, F_GETLEASE, F_UNLCK } from '../sys/index.js';
import { listFds, readFdInfo, readFdTarget, readStat, type FdTarget } from '../proc/index.js';
import type { FdImage } from '../../formats/schema.js';
import { readPipe, isReadEnd } from '../files/pipe.js';
import type { SocketOptions } from '../files/socket.js';
import { FD_KINDS, isInheritedStdio } from '../files/fd-kinds.js';
import { TsnapError } from '../errors.js';

/** O_PATH: an fd that only names a file (fcntl F_GETOWN_EX/F_GETLEASE answer EBADF). */
const O_PATH = 0o10000000;
const O_ACCMODE = 3;
const O_RDONLY = 0;
const F_RDLCK = 0;

const WITH_FILE = new Set(['file', 'dir', 'devnull', 'tty', 'fifo', 'chardev', 'blockdev', 'memfd']);

/** `ghostLimit`: bytes of data a deleted file may hold to be stored (dump --ghost-limit). */
export type FdReadOptions = SocketOptions & { ghostLimit?: number };

export function readFds(pid: number, opts: FdReadOptions = {}): FdImage[] {
  return readTreeFds([pid], opts).get(pid)!;
}

interface SeenFd {
  pid: number;
  t: FdTarget;
  img: FdImage;
}

/**
 * The fds of several processes dumped together (a tree): open file
 * descriptions and pipes are matched across them, so a pipe between a
 * parent and its child is one pipe, and an fd inherited through fork is one
 * open file.
 */
export function readTreeFds(pids: number[], opts: FdReadOptions = {}): Map<number, FdImage[]> {
  const seen: SeenFd[] = [];
  const out = new Map<number, FdImage[]>();
  /** Inodes of deleted files whose contents this image already holds. */
  const ghosts = new Set<string>();
  for (const pid of pids) {
    let pidfd: number;
    try {
      pidfd = pidfdOpen(pid);
    } catch (err) {
      // Checking a running tree before the freeze: a child may just have gone.
      if (opts.enter === false && pids.length > 1 && pid !== pids[0]) continue;
      throw err;
    }
    try {
      const fds = listFds(pid);
      const open = new Set(fds);
      const list: FdImage[] = [];
      for (const fd of fds) {
        const t = readFdTarget(pid, fd);
        const info = readFdInfo(pid, fd);
        const img: FdImage = {
          fd, kind: t.kind, link: t.link, path: t.path, flags: info.flags, pos: info.pos,
          file: WITH_FILE.has(t.kind) ? { dev: t.dev, ino: t.ino, size: t.size, mtimeMs: 0, mode: t.mode, rdev: t.rdev, deleted: t.deleted } : null,
        };
        FD_KINDS[img.kind].describe?.({ pid, pidfd, target: t, info, open, opts, frozen: opts.enter !== false, ghosts, ghostLimit: opts.ghostLimit }, img);
        describeOwner(pidfd, img);
        // A lease being broken: F_GETLEASE already answers the type it is
        // broken to, and restore takes that (the break as completed; the
        // holder was sent its signal before the dump). A read lease cannot be
        // taken on a file open for writing, so that downgrade is refused.
        if (/\bLEASE\s+BREAKING\b/.test(info.extra.lock ?? '') && img.lease === F_RDLCK && (img.flags & O_ACCMODE) !== O_RDONLY) {
          throw new TsnapError('unsupported', `fd ${fd} of process ${pid} holds a lease being broken down to a read lease while the file is open for writing; restore could not take that lease (retry once the break is over)`);
        }
        seen.push({ pid, t, img });
        list.push(img);
      }
      out.set(pid, list);
    } finally {
      closeSync(pidfd);
    }
  }
  assignOfds(seen);
  describePipes(seen.filter((s) => s.t.kind === 'pipe'), pids.length > 1, opts.enter !== false);
  checkPairs(seen, pids.length > 1);
  for (const s of seen) checkSupported(s.img, s.pid, pids);
  for (const s of seen) checkOwner(s.img, s.pid, pids);
  return out;
}

/**
 * Who gets the open file's SIGIO/SIGURG (F_SETOWN_EX, F_SETSIG) and the
 * lease it holds (F_GETLEASE, regular files): properties of the open file,
 * read on a copy.
 */
function describeOwner(pidfd: number, img: FdImage): void {
  // An O_PATH fd has neither (fcntl answers EBADF): nothing to record.
  if (img.flags & O_PATH) return;
  const copy = pidfdGetfd(pidfd, img.fd);
  try {
    const o = fileOwner(copy);
    if (o.pid !== 0 || o.signal !== 0) img.owner = o;
    if (img.kind === 'file') {
      const lease = fcntl(copy, F_GETLEASE);
      if (lease !== F_UNLCK) img.lease = lease;
    }
  } finally {
    closeSync(copy);
  }
}

/** fds that are one open file description (dup, fork) get one id; kcmp tells. */
function assignOfds(seen: SeenFd[]): void {
  const byInode = new Map<string, SeenFd[]>();
  let next = 1;
  for (const s of seen) {
    const key = `${s.t.dev}:${s.t.ino}`;
    const reps = byInode.get(key) ?? [];
    const same = reps.find((r) => sameFile(r.pid, r.img.fd, s.pid, s.img.fd));
    s.img.ofd = same ? same.img.ofd! : next++;
    if (!same) reps.push(s);
    byInode.set(key, reps);
  }
}

/**
 * A pipe is restorable when both its ends are open in the dumped processes;
 * one on 0-2 whose other end is elsewhere is stdio and left to restore's
 * stdio. The unread bytes are stored once, with the pipe's first fd.
 */
function describePipes(pipes: SeenFd[], tree: boolean, withData: boolean): void {
  const byId = new Map<number, SeenFd[]>();
  for (const s of pipes) {
    const l = byId.get(s.t.ino) ?? [];
    l.push(s);
    byId.set(s.t.ino, l);
  }
  for (const [id, ends] of byId) {
    const hasRead = ends.some((e) => isReadEnd(e.img));
    const hasWrite = ends.some((e) => !isReadEnd(e.img));
    if (!(hasRead && hasWrite)) {
      const inner = ends.filter((e) => e.img.fd > 2);
      if (inner.length === 0) continue; // stdio
      const where = tree ? 'the dumped tree' : `process ${inner[0].pid}${' (dump its parent with --tree if the other end is there)'}`;
      throw new TsnapError('unsupported', `fd ${inner[0].img.fd} of process ${inner[0].pid} is one end of pipe:[${id}] whose other end is outside ${where}; tsnap restores pipes with both ends inside (or on stdin/stdout/stderr)`);
    }
    const data = withData ? readPipe(ends[0].pid, ends[0].img.fd, id) : { id, capacity: 0, data: null };
    ends.forEach((e, i) => { e.img.pipe = { id, capacity: data.capacity, data: i === 0 ? data.data : null }; });
  }
}

/**
 * Both ends of every connected unix socket must be in the dump. A socket on
 * 0-2 is the process's own only when it is one end of such a pair;
 * otherwise it is stdio, left to restore's stdio.
 */
function checkPairs(seen: SeenFd[], tree: boolean): void {
  const inodes = new Set(seen.filter((s) => s.img.socket).map((s) => s.t.ino));
  for (const s of seen) {
    const k = s.img.socket;
    if (k && s.img.fd <= 2 && (k.state !== 'pair' || !inodes.has(k.peerIno!))) {
      delete s.img.socket;
      continue;
    }
    if (k?.state !== 'pair') continue;
    if (!inodes.has(k.peerIno!)) {
      throw new TsnapError('unsupported', `fd ${s.img.fd} of process ${s.pid} is a unix socket connected to socket:[${k.peerIno}] outside ${tree ? 'the dumped tree' : 'the process (dump its parent with --tree if the peer is there)'}; only connections inside the dump can be restored`);
    }
    // Restore rebuilds a pair with socketpair(): both ends must name each
    // other. A datagram socket connect()ed to another that is not connected
    // back (several may send to one) is not such a pair.
    const peer = seen.find((x) => x.t.ino === k.peerIno && x.img.socket);
    if (peer && (peer.img.socket!.state !== 'pair' || peer.img.socket!.peerIno !== k.ino)) {
      throw new TsnapError('unsupported', `fd ${s.img.fd} of process ${s.pid} is a unix socket connected one way to socket:[${k.peerIno}] (a datagram socket connect()ed to another); tsnap cannot restore one-way unix connections yet`);
    }
  }
}

const F_OWNER_TID = 0;
const F_OWNER_PID = 1;

/** An owner restore cannot name again (a process outside the dump) is refused: F_SETOWN_EX would fail. */
function checkOwner(f: FdImage, pid: number, pids: number[]): void {
  const o = f.owner;
  if (!o || o.pid === 0) return;
  const inside = o.type === F_OWNER_PID ? pids.includes(o.pid)
    : o.type === F_OWNER_TID ? pids.some((p) => existsSync(`/proc/${p}/task/${o.pid}`))
      : pids.some((p) => { try { return readStat(p).pgrp === o.pid; } catch { return false; } });
  if (!inside) {
    const what = o.type === F_OWNER_TID ? 'thread' : o.type === F_OWNER_PID ? 'process' : 'process group';
    throw new TsnapError('unsupported', `fd ${f.fd} of process ${pid} sends its signals (F_SETOWN) to ${what} ${o.pid}, which is not part of the dump; dump that process with --tree, or clear the owner`);
  }
}

/** Refuses, naming it, an fd whose kind's module says restore could not bring it back. */
function checkSupported(f: FdImage, pid: number, pids: number[]): void {
  if (isInheritedStdio(f)) return;
  const kind = FD_KINDS[f.kind];
  kind.checkDump?.(f, { pid, pids });
  if (kind.restorable(f)) return;
  throw new TsnapError('unsupported', `fd ${f.fd}${pids.length > 1 ? ` of process ${pid}` : ''} is a ${f.kind} (${f.link}) that tsnap cannot checkpoint${kind.refusalHint ?? ''}`);
}

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
import { readPipe, isReadEnd, describeHalfClosedPipe, checkPipesOutside, refuseOneEnded } from '../files/pipe.js';
import type { SocketOptions } from '../files/socket.js';
import { FD_KINDS, isInheritedStdio } from '../files/fd-kinds.js';
import { TsnapError } from '../errors.js';
import { linkUnixSockets } from '../files/unix.js';
import { describeInetShutdowns } from '../files/socket-state.js';
import { describeInotifyFds } from '../files/inotify.js';
import { describeTtys } from '../files/tty.js';
import { describeInflight, numberInflight, releaseInflight, hasFilesInFlight } from '../files/scm-rights.js';
import { readUnlessGone, withoutVanished, checkUnlessChanged, readRunningTwice } from './fds-unfrozen.js';

/** O_PATH: an fd that only names a file (fcntl F_GETOWN_EX/F_GETLEASE answer EBADF). */
const O_PATH = 0o10000000;
const O_ACCMODE = 3;
const O_RDONLY = 0;
const F_RDLCK = 0;

const WITH_FILE = new Set(['file', 'dir', 'devnull', 'tty', 'fifo', 'chardev', 'blockdev', 'memfd']);

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
/** `zombies`: children of the tree that exited, which a tree image records too (pidfds may name them). */
/** `ghostLimit`: bytes of data a deleted file may hold to be stored (dump --ghost-limit). */
export type FdReadOptions = SocketOptions & { zombies?: number[]; ghostLimit?: number };

export function readTreeFds(pids: number[], opts: FdReadOptions = {}): Map<number, FdImage[]> {
  const read = () => {
    try {
      return readAllFds(pids, opts);
    } finally {
      releaseInflight();
    }
  };
  if (opts.enter !== false) return read();
  return readRunningTwice(read) ?? new Map(pids.map((pid) => [pid, []]));
}

function readAllFds(pids: number[], opts: FdReadOptions): Map<number, FdImage[]> {
  const seen: SeenFd[] = [];
  const out = new Map<number, FdImage[]>();
  /** Inodes of deleted files whose contents this image already holds. */
  const ghosts = new Set<string>();
  const unfrozen = opts.enter === false;
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
      let mine: SeenFd[] = [];
      for (const fd of fds) {
        const s = unfrozen ? readUnlessGone(pid, fd, (t) => describeFd(pid, pidfd, fd, open, opts, ghosts, pid, t)) : describeFd(pid, pidfd, fd, open, opts, ghosts);
        if (s) mine.push(s);
      }
      if (unfrozen) mine = withoutVanished(mine);
      const list = mine.map((s) => s.img);
      if (unfrozen) checkUnlessChanged(mine, () => describeInotifyFds(pid, list));
      else describeInotifyFds(pid, list);
      seen.push(...mine);
      out.set(pid, list);
    } finally {
      closeSync(pidfd);
    }
  }
  if (unfrozen) checkUnlessChanged(seen, () => checkAcross(seen, pids, out, opts, ghosts));
  else checkAcross(seen, pids, out, opts, ghosts);
  return out;
}

/** What involves several fds (files in flight, shared open files, pipes, pairs, ttys) and every refusal. */
function checkAcross(seen: SeenFd[], pids: number[], out: Map<number, FdImage[]>, opts: FdReadOptions, ghosts: Set<string>): void {
  // Files in flight in unix sockets are fds of tsnap while it reads them.
  const self = pidfdOpen(process.pid);
  let inflight;
  try {
    inflight = describeInflight(seen, pids, (local, skipQueue, filesPid) => describeFd(process.pid, self, local, new Set(listFds(filesPid)), skipQueue ? { ...opts, enter: false } : opts, ghosts, filesPid));
  } finally {
    closeSync(self);
  }
  assignOfds(seen);
  // Before the freeze, files in flight are not read yet: the other end of a pipe or pair may be one.
  const endsLater = opts.enter === false && seen.some((s) => hasFilesInFlight(s.pid, s.img));
  describePipes(seen.filter((s) => s.t.kind === 'pipe'), pids, opts.enter !== false, endsLater);
  checkPipesOutside(seen.filter((s) => s.img.pipe), pids);
  linkUnixSockets(seen, pids.length > 1, { ...opts, endsLater });
  describeInetShutdowns(seen);
  describeTtys(seen, pids, opts.enter !== false);
  for (const s of seen) if (!(endsLater && s.t.kind === 'pipe' && !s.img.pipe)) checkSupported(s.img, s.pid, pids, opts.zombies ?? []);
  for (const s of seen) checkOwner(s.img, s.pid, pids);
  numberInflight(inflight, (pid) => out.get(pid)!);
}

/** One fd of `pid` read for the image. `filesPid`: whose fd numbers an epoll names (pid but for files in flight). */
function describeFd(pid: number, pidfd: number, fd: number, open: Set<number>, opts: FdReadOptions, ghosts: Set<string>, filesPid = pid, t = readFdTarget(pid, fd)): SeenFd {
  const info = readFdInfo(pid, fd);
  const img: FdImage = {
    fd, kind: t.kind, link: t.link, path: t.path, flags: info.flags, pos: info.pos,
    file: WITH_FILE.has(t.kind) ? { dev: t.dev, ino: t.ino, size: t.size, mtimeMs: 0, mode: t.mode, rdev: t.rdev, deleted: t.deleted } : null,
  };
  FD_KINDS[img.kind].describe?.({ pid, pidfd, target: t, info, open, opts, frozen: opts.enter !== false, ghosts, ghostLimit: opts.ghostLimit, filesPid }, img);
  describeOwner(pidfd, img);
  // A lease being broken: F_GETLEASE already answers the type it is
  // broken to, and restore takes that (the break as completed; the
  // holder was sent its signal before the dump). A read lease cannot be
  // taken on a file open for writing, so that downgrade is refused.
  if (/\bLEASE\s+BREAKING\b/.test(info.extra.lock ?? '') && img.lease === F_RDLCK && (img.flags & O_ACCMODE) !== O_RDONLY) {
    throw new TsnapError('unsupported', `fd ${fd} of process ${pid} holds a lease being broken down to a read lease while the file is open for writing; restore could not take that lease (retry once the break is over)`);
  }
  return { pid, t, img };
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
 * A pipe is restorable when both its ends are open in the dumped processes,
 * or when the end the dump lacks is closed everywhere (half-closed); one on
 * 0-2 whose other end is held elsewhere is stdio and left to restore's
 * stdio. The unread bytes are stored once, with the pipe's first fd.
 */
function describePipes(pipes: SeenFd[], pids: number[], withData: boolean, endsLater = false): void {
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
      if (describeHalfClosedPipe(ends, id, withData)) continue;
      if (endsLater) continue; // the other end may be in flight: the frozen pass sees it
      if (ends.every((e) => e.img.fd <= 2)) continue; // stdio
      refuseOneEnded(ends, id, pids);
    }
    const data = withData ? readPipe(ends[0].pid, ends[0].img.fd, id) : { id, capacity: 0, data: null };
    ends.forEach((e, i) => { e.img.pipe = { id, capacity: data.capacity, data: i === 0 ? data.data : null }; });
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
function checkSupported(f: FdImage, pid: number, pids: number[], zombies: number[]): void {
  if (isInheritedStdio(f)) return;
  const kind = FD_KINDS[f.kind];
  kind.checkDump?.(f, { pid, pids, zombies });
  if (kind.restorable(f)) return;
  throw new TsnapError('unsupported', `fd ${f.fd}${pids.length > 1 ? ` of process ${pid}` : ''} is a ${f.kind} (${f.link}) that tsnap cannot checkpoint${kind.refusalHint ?? ''}`);
}

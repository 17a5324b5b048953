/**
 * Pipes: both ends, the capacity and the unread bytes.
 *
 * Dump reads the buffered bytes without consuming them: tee() from tsnap's
 * copy of a read end (pidfd_getfd: the program's own open file) into a pipe
 * of tsnap's own. Restore creates the pipe in the new process, writes the
 * bytes back through /proc/PID/fd/N of its write end, and places both ends.
 *
 * A half-closed pipe (one end closed by every process that had it: a
 * producer that exited, a reader gone) comes back half-closed: restore
 * makes the pipe, puts the bytes back, and closes the end nobody had.
 */
import { openSync, closeSync, readSync, writeSync, readdirSync, readlinkSync, readFileSync } from 'node:fs';
import { constants as C } from 'node:fs';
import { pipe2, tee, fcntl, ioctl, pollHangup, pidfdOpen, pidfdGetfd, SYS, O_CLOEXEC, O_NONBLOCK, F_GETPIPE_SZ, F_SETPIPE_SZ, F_SETFL } from '../sys/index.js';
import type { FdImage, PipeImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { placeEnds, SETFL_MASK, type Placement } from './place.js';
import { TsnapError } from '../errors.js';
import type { FdKindModule } from './kind.js';

const O_ACCMODE = 3;
const F_GETFL = 3;
const FIONREAD = 0x541b;
const POLLERR = 0x8;
const POLLHUP = 0x10;

export function isReadEnd(f: FdImage): boolean {
  return (f.flags & O_ACCMODE) === C.O_RDONLY;
}

/** fd N of pid, duplicated into tsnap: the same open file, so nothing about the pipe changes. */
function copyOf(pid: number, fd: number): number {
  const pidfd = pidfdOpen(pid);
  try {
    return pidfdGetfd(pidfd, fd);
  } finally {
    closeSync(pidfd);
  }
}

/**
 * The unread bytes and capacity of the pipe (or FIFO) behind fd N of pid.
 *
 * A readable fd is tee()d from tsnap's copy of it. Only a write-only fd
 * needs a reader of tsnap's own (opening /proc/PID/fd/N, which makes one
 * more reader of the pipe for a moment; when its close leaves the pipe
 * without readers the kernel wakes the writers, and sends SIGIO to one that
 * asked for it with O_ASYNC): so that open is made only when FIONREAD says
 * there is something to read.
 */
export function readPipe(pid: number, fd: number, id: number): PipeImage {
  const copy = copyOf(pid, fd);
  let src = -1;
  let mine: [number, number] | null = null;
  try {
    const capacity = fcntl(copy, F_GETPIPE_SZ);
    if ((fcntl(copy, F_GETFL) & O_ACCMODE) !== C.O_WRONLY) src = copy;
    else if (queued(copy) > 0) src = openSync(`/proc/${pid}/fd/${fd}`, C.O_RDONLY | C.O_NONBLOCK | O_CLOEXEC);
    if (src < 0) return { id, capacity, data: Buffer.alloc(0) };
    mine = pipe2(O_CLOEXEC | O_NONBLOCK);
    if (fcntl(mine[1], F_GETPIPE_SZ) < capacity) fcntl(mine[1], F_SETPIPE_SZ, capacity);
    const n = tee(src, mine[1], capacity);
    const data = Buffer.alloc(n);
    for (let got = 0; got < n;) got += readSync(mine[0], data, got, n - got, null);
    return { id, capacity, data };
  } finally {
    if (src >= 0 && src !== copy) closeSync(src);
    closeSync(copy);
    if (mine) { closeSync(mine[0]); closeSync(mine[1]); }
  }
}

/** Bytes waiting in a pipe (FIONREAD answers on either end). */
function queued(fd: number): number {
  const b = Buffer.alloc(4);
  ioctl(fd, FIONREAD, b, 'ioctl(FIONREAD)');
  return b.readInt32LE(0);
}

/**
 * Whether no process on the system holds the other end of this pipe any
 * more: the kernel's own count, seen through poll() on tsnap's copy of the
 * end. poll reports POLLHUP on a read end when the pipe has no writer
 * left, and POLLERR on a write end when it has no reader, whoever and
 * wherever they are (another process, a message in flight, io_uring); it
 * reads nothing and opens nothing, unlike the other signals (a read
 * returning EOF, a write failing with EPIPE) or a /proc/PID/fd/N open,
 * which adds a reader or writer itself. Scanning /proc/../fd would miss
 * ends held in flight. (A FIFO reader opened with O_NONBLOCK before any
 * writer does not report POLLHUP: kind 'pipe' only; such an end is then
 * taken for one held elsewhere and refused, never the other way round.)
 */
export function otherEndClosed(pid: number, fd: FdImage): boolean {
  const copy = copyOf(pid, fd.fd);
  try {
    return (pollHangup(copy) & (isReadEnd(fd) ? POLLHUP : POLLERR)) !== 0;
  } finally {
    closeSync(copy);
  }
}

/**
 * A pipe of which the dump holds one end only: described (with the bytes
 * it holds) when its other end is closed everywhere, and then restored
 * half-closed. Returns false when the other end is held somewhere outside
 * the dump (the caller refuses it, or leaves it to stdio).
 */
export function describeHalfClosedPipe(ends: { pid: number; img: FdImage }[], id: number, withData: boolean): boolean {
  const first = ends[0];
  if (ends.some((e) => (e.img.flags & O_ACCMODE) === C.O_RDWR)) return false; // both ends in one fd: not half of anything
  if (!otherEndClosed(first.pid, first.img)) return false;
  const closedEnd = isReadEnd(first.img) ? 'write' : 'read';
  const p = withData ? readPipe(first.pid, first.img.fd, id) : { id, capacity: 0, data: null };
  ends.forEach((e, i) => { e.img.pipe = { id, capacity: p.capacity, data: i === 0 ? p.data : null, closedEnd }; });
  return true;
}

/**
 * A process outside `pids` that holds pipe `link` open for reading
 * (`wantRead`) or writing: the fd links and fdinfo flags of every process.
 */
function holderOutside(link: string, wantRead: boolean, pids: number[]): { pid: number; fd: number; comm: string } | null {
  const inside = new Set([...pids, process.pid]);
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || inside.has(Number(name))) continue;
    let fds: string[];
    try { fds = readdirSync(`/proc/${name}/fd`); } catch { continue; }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${name}/fd/${fd}`) !== link) continue;
        const flags = parseInt(/^flags:\s*(\d+)/m.exec(readFileSync(`/proc/${name}/fdinfo/${fd}`, 'utf8'))![1], 8);
        if (((flags & O_ACCMODE) === C.O_RDONLY) !== wantRead) continue;
        let comm = '?';
        try { comm = readFileSync(`/proc/${name}/comm`, 'utf8').trim(); } catch { /* gone meanwhile */ }
        return { pid: Number(name), fd: Number(fd), comm };
      } catch { /* closed or gone meanwhile */ }
    }
  }
  return null;
}

/**
 * Refuses a pipe the dump holds one end of (above fd 2) while its other
 * end lives on, saying where: a process outside the dump, or nowhere a
 * process can be asked (an fd in flight in a unix socket, io_uring).
 */
export function refuseOneEnded(ends: { pid: number; img: FdImage }[], id: number, pids: number[]): never {
  const e = ends.find((x) => x.img.fd > 2) ?? ends[0];
  const head = `fd ${e.img.fd} of process ${e.pid} is one end of pipe:[${id}]`;
  const h = holderOutside(e.img.link, !isReadEnd(e.img), pids);
  if (h) {
    throw new TsnapError('unsupported', `${head} whose other end is outside the dump, in process ${h.pid} (${h.comm}, its fd ${h.fd}); dump that process too, with --tree (tsnap restores pipes with both ends inside, closed, or on stdin/stdout/stderr)`);
  }
  throw new TsnapError('unsupported', `${head} whose other end no process has open: it is in flight in a unix socket (SCM_RIGHTS) or held by the kernel (io_uring); tsnap cannot restore that yet`);
}

/**
 * The pipes restore will make anew (`ends`: their fds in the dump) must
 * have no holder outside the dumped processes: a process that kept an end
 * (a child left out of the dump, a sibling that inherited it) would stay
 * on the old pipe, cut off from the restored one, or read a second copy of
 * its bytes. Found by the fd links of every process (pipe:[ino] names one
 * pipe on the whole system); tsnap's own copies are not counted.
 */
export function checkPipesOutside(ends: { pid: number; img: FdImage }[], pids: number[]): void {
  const byLink = new Map<string, { pid: number; img: FdImage }>();
  for (const e of ends) if (!byLink.has(e.img.link)) byLink.set(e.img.link, e);
  if (byLink.size === 0) return;
  const inside = new Set([...pids, process.pid]);
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || inside.has(Number(name))) continue;
    let fds: string[];
    try { fds = readdirSync(`/proc/${name}/fd`); } catch { continue; } // gone, or a zombie
    for (const fd of fds) {
      let link: string;
      try { link = readlinkSync(`/proc/${name}/fd/${fd}`); } catch { continue; }
      const e = byLink.get(link);
      if (!e) continue;
      let comm = '?';
      try { comm = readFileSync(`/proc/${name}/comm`, 'utf8').trim(); } catch { /* gone meanwhile */ }
      throw new TsnapError('unsupported', `fd ${e.img.fd} of process ${e.pid} is one end of ${link}, which process ${name} (${comm}) outside the dump holds too (its fd ${fd}); restore would leave that process on the old pipe (dump it too, with --tree, or close the pipe there)`);
    }
  }
}

/**
 * Whether the image has every end the pipe needs: both, or the one that
 * was left of a half-closed pipe.
 */
export function pipeEndsPresent(ends: { read: Set<number>; write: Set<number> }, p: PipeImage): boolean {
  if (p.closedEnd) return p.closedEnd === 'read' ? ends.read.size === 0 && ends.write.size > 0 : ends.write.size === 0 && ends.read.size > 0;
  return ends.read.size > 0 && ends.write.size > 0;
}

/**
 * Self-check of a restored pipe fd, on tsnap's copy of it: a half-closed
 * pipe must show its other end closed (POLLHUP / POLLERR), any other pipe
 * must not. Returns the difference, or null.
 */
export function checkPipeEnd(copy: number, f: FdImage): string | null {
  if (f.kind !== 'pipe' || !f.pipe) return null;
  const gone = (pollHangup(copy) & (isReadEnd(f) ? POLLHUP : POLLERR)) !== 0;
  const want = f.pipe.closedEnd !== undefined;
  if (gone === want) return null;
  const other = isReadEnd(f) ? 'write' : 'read';
  return `fd ${f.fd} (${f.link}): the ${other} end of the pipe is ${gone ? 'closed' : 'open'}, the image's ${want ? 'closed' : 'open'}`;
}

/**
 * Creates one pipe in the task and puts every fd of it that this process
 * has (`ends`: image fds of this pipe grouped by open file, dups included)
 * in place. An end this process lacks stays open above every target
 * number, for another process of the tree to take; returns where both
 * ends are. The end of a half-closed pipe that nobody had is closed once
 * the bytes are back in.
 */
export function restorePipe(rt: RemoteTask, ends: FdImage[][], floor: number): { read: number; write: number } {
  const data = ends.flat().find((f) => f.pipe?.data)?.pipe ?? ends[0][0].pipe!;
  const at = rt.put(Buffer.alloc(8));
  rt.sc.check('pipe2', SYS.pipe2, at, O_CLOEXEC);
  const fds = rt.get(8);
  const [r, w] = [fds.readInt32LE(0), fds.readInt32LE(4)];
  if (data.capacity !== 65536) rt.sc.check('fcntl(F_SETPIPE_SZ)', SYS.fcntl, w, F_SETPIPE_SZ, data.capacity);
  if (data.data && data.data.length > 0) {
    const wfd = openSync(`/proc/${rt.pid}/fd/${w}`, C.O_WRONLY | C.O_NONBLOCK | O_CLOEXEC);
    try {
      const n = writeSync(wfd, data.data);
      if (n !== data.data.length) throw new TsnapError('restoreFailed', `pipe:[${data.id}]: only ${n} of ${data.data.length} buffered bytes fit back`);
    } finally {
      closeSync(wfd);
    }
  }
  // Each open file of an end is its own description, with its own status
  // flags: the first is the one pipe2 made, every further one is opened
  // anew through /proc/self/fd (as the program did to get it).
  const openFiles = (end: number, groups: FdImage[][], accmode: number): Placement[] =>
    groups.map((targets, i) => ({ tmp: i === 0 ? end : rt.open(`/proc/self/fd/${end}`, accmode), targets }));
  const reads = openFiles(r, ends.filter((g) => isReadEnd(g[0])), C.O_RDONLY);
  const writes = openFiles(w, ends.filter((g) => !isReadEnd(g[0])), C.O_WRONLY);
  for (const p of [...reads, ...writes]) {
    const flags = p.targets[0].flags & SETFL_MASK;
    if (flags) rt.sc.check('fcntl(F_SETFL)', SYS.fcntl, p.tmp, F_SETFL, flags);
  }
  const placed = placeEnds(rt, { tmp: r, targets: reads[0]?.targets ?? [] }, { tmp: w, targets: writes[0]?.targets ?? [] }, floor,
    [...reads.slice(1), ...writes.slice(1)]);
  const closed = ends[0][0].pipe!.closedEnd;
  if (closed) rt.close(closed === 'read' ? placed.a : placed.b);
  return { read: placed.a, write: placed.b };
}

/** Pipes are matched end to end across the dump (dump/fds.ts) and made with both ends at once. */
export const pipeKind: FdKindModule = {
  restorable: (f) => !!f.pipe,
  restore: (c, group) => c.defer('pipe', group[0].pipe!.id, group),
};

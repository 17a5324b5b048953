/**
 * The open files of a process, with what each kind needs to be recreated
 * (src/files has one module per kind). Everything that restore could not
 * bring back is refused here, naming the fd, so that a dump never produces
 * an image that fails later; dump() calls this once before freezing (to
 * fail fast, with the process untouched) and again while frozen.
 */
import { closeSync } from 'node:fs';
import { pidfdOpen, sameFile } from '../sys/index.js';
import { listFds, readFdInfo, readFdTarget, type FdTarget, type FdInfo } from '../proc/index.js';
import type { FdImage } from '../../formats/schema.js';
import { readPipe, isReadEnd } from '../files/pipe.js';
import { describeEventfd, describeTimerfd, describeSignalfd } from '../files/anon-fds.js';
import { describeEpoll } from '../files/epoll.js';
import { describeSocket } from '../files/socket.js';
import { REOPENED } from '../files/regular.js';
import { TsnapError } from '../errors.js';

const WITH_FILE = new Set(['file', 'dir', 'devnull', 'tty', 'fifo', 'chardev', 'blockdev', 'memfd']);

export function readFds(pid: number): FdImage[] {
  const pidfd = pidfdOpen(pid);
  try {
    const fds = listFds(pid);
    const open = new Set(fds);
    const seen: { t: FdTarget; info: FdInfo; img: FdImage }[] = [];
    for (const fd of fds) {
      const t = readFdTarget(pid, fd);
      const info = readFdInfo(pid, fd);
      const img: FdImage = {
        fd, kind: t.kind, link: t.link, path: t.path, flags: info.flags, pos: info.pos,
        file: WITH_FILE.has(t.kind) ? { dev: t.dev, ino: t.ino, size: t.size, mtimeMs: 0, mode: t.mode, rdev: t.rdev, deleted: t.deleted } : null,
      };
      switch (t.kind) {
        case 'eventfd': img.eventfd = describeEventfd(info); break;
        case 'timerfd': img.timerfd = describeTimerfd(info); break;
        case 'signalfd': img.signalfd = describeSignalfd(info); break;
        case 'epoll': img.epoll = describeEpoll(pid, info, open); break;
        case 'socket': if (fd > 2) img.socket = describeSocket(pidfd, fd, t.link); break;
        default: break;
      }
      seen.push({ t, info, img });
    }
    assignOfds(pid, seen);
    describePipes(pid, seen.filter((s) => s.t.kind === 'pipe'));
    const images = seen.map((s) => s.img);
    for (const f of images) checkSupported(f);
    return images;
  } finally {
    closeSync(pidfd);
  }
}

/** fds that are one open file description (dup, fork) get one id; kcmp tells. */
function assignOfds(pid: number, seen: { t: FdTarget; img: FdImage }[]): void {
  const byInode = new Map<string, FdImage[]>();
  let next = 1;
  for (const { t, img } of seen) {
    const key = `${t.dev}:${t.ino}`;
    const reps = byInode.get(key) ?? [];
    const same = reps.find((r) => sameFile(pid, r.fd, pid, img.fd));
    img.ofd = same ? same.ofd! : next++;
    if (!same) reps.push(img);
    byInode.set(key, reps);
  }
}

/**
 * A pipe is restorable when both its ends are open in the process; one on
 * 0-2 whose other end is elsewhere is stdio and left to restore's stdio.
 */
function describePipes(pid: number, pipes: { t: FdTarget; img: FdImage }[]): void {
  const byId = new Map<number, FdImage[]>();
  for (const { t, img } of pipes) {
    const l = byId.get(t.ino) ?? [];
    l.push(img);
    byId.set(t.ino, l);
  }
  for (const [id, ends] of byId) {
    const hasRead = ends.some(isReadEnd);
    const hasWrite = ends.some((e) => !isReadEnd(e));
    if (!(hasRead && hasWrite)) {
      const inner = ends.filter((e) => e.fd > 2);
      if (inner.length === 0) continue; // stdio
      throw new TsnapError('unsupported', `fd ${inner[0].fd} is one end of pipe:[${id}] whose other end is outside the process; tsnap restores pipes with both ends in the process (or on stdin/stdout/stderr)`);
    }
    const data = readPipe(pid, ends[0].fd, id);
    ends.forEach((e, i) => { e.pipe = { id, capacity: data.capacity, data: i === 0 ? data.data : null }; });
  }
}

function checkSupported(f: FdImage): void {
  if (REOPENED.has(f.kind)) {
    if (f.file?.deleted) throw new TsnapError('unsupported', `fd ${f.fd} is ${f.path}, deleted while open; its contents cannot be restored`);
    return;
  }
  if (f.fd <= 2 && (f.kind === 'tty' || f.kind === 'pipe' || f.kind === 'fifo' || f.kind === 'socket')) return;
  if (f.pipe || f.eventfd || f.timerfd || f.signalfd || f.epoll || f.socket) return;
  const hint = f.kind === 'tty' || f.kind === 'fifo' ? ' (supported on stdin/stdout/stderr only)' : '';
  throw new TsnapError('unsupported', `fd ${f.fd} is a ${f.kind} (${f.link}) that tsnap cannot checkpoint${hint}`);
}

/**
 * File descriptors at their original numbers, each kind recreated by its
 * module in src/files. fds that shared one open file description at dump
 * (same `ofd`) are created once and duplicated. Pipes, ttys and sockets on
 * 0-2 that lead outside the process are its stdio: whatever tsnap restore
 * was given (its own by default, or --stdin/--stdout/--stderr files),
 * inherited from the helper.
 *
 * Order: every non-epoll file first, then the epoll instances, then their
 * registrations (which name the other fds by number).
 */
import { listFds } from '../proc/index.js';
import type { FdImage } from '../../formats/schema.js';
import type { RemoteTask } from './remote-task.js';
import { TsnapError } from '../errors.js';
import { REOPENED, checkReopenable, restoreReopened } from '../files/regular.js';
import { restorePipe, isReadEnd } from '../files/pipe.js';
import { restoreEventfd, restoreTimerfd, restoreSignalfd } from '../files/anon-fds.js';
import { createEpoll, registerEpollTargets } from '../files/epoll.js';
import { restoreSocket } from '../files/socket.js';

const STDIO_KINDS = new Set(['tty', 'pipe', 'fifo', 'socket']);

/** An fd on 0-2 that leads outside the process: restored as tsnap restore's own stdio. */
export function isInheritedStdio(f: FdImage): boolean {
  return f.fd <= 2 && STDIO_KINDS.has(f.kind) && !f.pipe && !f.socket;
}

const RECREATED = new Set(['pipe', 'eventfd', 'timerfd', 'signalfd', 'epoll', 'socket']);

/** Refuses what restore cannot bring back, before anything is created. */
export function checkFds(fds: FdImage[]): void {
  for (const f of fds) {
    if (isInheritedStdio(f)) continue;
    if (REOPENED.has(f.kind)) { checkReopenable(f); continue; }
    if (RECREATED.has(f.kind) && (f.kind !== 'pipe' || f.pipe) && (f.kind !== 'socket' || f.socket)) continue;
    throw new TsnapError('unsupported', `fd ${f.fd} is a ${f.kind} (${f.link}); restoring this kind of fd is not supported`);
  }
}

/** fds grouped by open file description, in fd order of each group's first member. */
function byOfd(fds: FdImage[]): FdImage[][] {
  const groups = new Map<string, FdImage[]>();
  for (const f of [...fds].sort((a, b) => a.fd - b.fd)) {
    const key = f.ofd === undefined ? `fd${f.fd}` : `ofd${f.ofd}`;
    const g = groups.get(key);
    if (g) g.push(f); else groups.set(key, [f]);
  }
  return [...groups.values()];
}

export function restoreFds(rt: RemoteTask, fds: FdImage[]): void {
  const wanted = new Set(fds.map((f) => f.fd));
  const floor = Math.max(2, ...wanted) + 1;
  const own = fds.filter((f) => !isInheritedStdio(f));
  const groups = byOfd(own);
  const pipes = new Map<number, FdImage[][]>();
  for (const g of groups) {
    const f = g[0];
    if (REOPENED.has(f.kind)) restoreReopened(rt, g, floor);
    else if (f.kind === 'eventfd') restoreEventfd(rt, g, floor);
    else if (f.kind === 'timerfd') restoreTimerfd(rt, g, floor);
    else if (f.kind === 'signalfd') restoreSignalfd(rt, g, floor);
    else if (f.kind === 'socket') restoreSocket(rt, g, floor);
    else if (f.kind === 'pipe') {
      const p = pipes.get(f.pipe!.id);
      if (p) p.push(g); else pipes.set(f.pipe!.id, [g]);
    } else if (f.kind !== 'epoll') {
      throw new TsnapError('unsupported', `fd ${f.fd} is a ${f.kind}; restoring this kind of fd is not supported`);
    }
  }
  for (const ends of pipes.values()) {
    if (!ends.some((g) => isReadEnd(g[0])) || !ends.some((g) => !isReadEnd(g[0]))) {
      throw new TsnapError('badImage', `pipe:[${ends[0][0].pipe!.id}] lacks one of its ends in the image`);
    }
    restorePipe(rt, ends, floor);
  }
  const epolls = groups.filter((g) => g[0].kind === 'epoll');
  for (const g of epolls) createEpoll(rt, g, floor);
  for (const g of epolls) registerEpollTargets(rt, g[0]);
  // Whatever the helper had that the process did not, goes.
  for (const fd of listFds(rt.pid)) if (!wanted.has(fd)) rt.close(fd);
}

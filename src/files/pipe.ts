/**
 * Pipes: both ends, the capacity and the unread bytes.
 *
 * Dump reads the buffered bytes without consuming them: tsnap opens the
 * pipe through /proc/PID/fd/N (which opens the same pipe anew) and tee()s
 * its contents into a pipe of its own. Restore creates the pipe in the new
 * process, writes the bytes back through /proc/PID/fd/N of its write end,
 * and places both ends.
 */
import { openSync, closeSync, readSync, writeSync } from 'node:fs';
import { constants as C } from 'node:fs';
import { pipe2, tee, fcntl, SYS, O_CLOEXEC, O_NONBLOCK, F_GETPIPE_SZ, F_SETPIPE_SZ, F_SETFL } from '../sys/index.js';
import type { FdImage, PipeImage } from '../../formats/schema.js';
import type { RemoteTask } from '../restore/remote-task.js';
import { placeEnds, SETFL_MASK, type Placement } from './place.js';
import { TsnapError } from '../errors.js';
import type { FdKindModule } from './kind.js';

const O_ACCMODE = 3;

export function isReadEnd(f: FdImage): boolean {
  return (f.flags & O_ACCMODE) === C.O_RDONLY;
}

/** The unread bytes and capacity of the pipe behind /proc/PID/fd/N. */
export function readPipe(pid: number, fd: number, id: number): PipeImage {
  const src = openSync(`/proc/${pid}/fd/${fd}`, C.O_RDONLY | C.O_NONBLOCK | O_CLOEXEC);
  let mine: [number, number] | null = null;
  try {
    const capacity = fcntl(src, F_GETPIPE_SZ);
    mine = pipe2(O_CLOEXEC | O_NONBLOCK);
    if (fcntl(mine[1], F_GETPIPE_SZ) < capacity) fcntl(mine[1], F_SETPIPE_SZ, capacity);
    const n = tee(src, mine[1], capacity);
    const data = Buffer.alloc(n);
    for (let got = 0; got < n;) got += readSync(mine[0], data, got, n - got, null);
    return { id, capacity, data };
  } finally {
    closeSync(src);
    if (mine) { closeSync(mine[0]); closeSync(mine[1]); }
  }
}

/**
 * Creates one pipe in the task and puts every fd of it that this process
 * has (`ends`: image fds of this pipe grouped by open file, dups included)
 * in place. An end this process lacks stays open above every target
 * number, for another process of the tree to take; returns where both
 * ends are.
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
  return { read: placed.a, write: placed.b };
}

/** Pipes are matched end to end across the dump (dump/fds.ts) and made with both ends at once. */
export const pipeKind: FdKindModule = {
  restorable: (f) => !!f.pipe,
  restore: (c, group) => c.defer('pipe', group[0].pipe!.id, group),
};

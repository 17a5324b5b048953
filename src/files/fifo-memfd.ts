/**
 * Named FIFOs and memfds: files with a name, whose contents live only in
 * memory.
 *
 * A FIFO is opened again by its path. Its unread bytes are taken at dump
 * like a pipe's (tee through /proc/PID/fd/N) and written back only when
 * the FIFO is empty at restore: a FIFO another process still holds open
 * kept its buffer. Opening never blocks: tsnap holds the FIFO open for
 * reading and writing itself while the process's ends are opened.
 *
 * A memfd's contents, size and seals are stored in the image (up to
 * MEMFD_MAX) and put into a new memfd of the same name.
 */
import { openSync, closeSync, readSync, writeSync, fstatSync, ftruncateSync, fchmodSync } from 'node:fs';
import { constants as C } from 'node:fs';
import { fcntl, ioctl, SYS, O_CLOEXEC, O_NONBLOCK, F_SETFL, F_DUPFD_CLOEXEC, SEEK_SET, O_CREAT, O_EXCL, O_TRUNC, O_NOCTTY } from '../sys/index.js';
import type { FdImage, MemfdObjectImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { readPipe } from './pipe.js';
import { placeFds, SETFL_MASK } from './place.js';
import { TsnapError } from '../errors.js';
import type { FdKindModule } from './kind.js';
import { checkReopenable } from './regular.js';
import { isFifoGhost, describeFifoGhost, FifoGhosts } from './fifo-ghost.js';

const F_ADD_SEALS = 1033;
const F_GET_SEALS = 1034;
const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;
const FIONREAD = 0x541b;
/** Larger memfds are refused: their contents go into the image's metadata. */
export const MEMFD_MAX = 256 << 20;

export function describeFifo(pid: number, f: FdImage): NonNullable<FdImage['fifo']> {
  const p = readPipe(pid, f.fd, f.file!.ino);
  return { capacity: p.capacity, data: p.data ?? Buffer.alloc(0) };
}

export function describeMemfd(pid: number, f: FdImage): FdImage['memfd'] {
  return readMemfd(`/proc/${pid}/fd/${f.fd}`, `fd ${f.fd}`, f.path ?? '');
}

/** The check before the freeze: only whether the memfd is small enough to be stored. */
export function checkMemfdSize(f: FdImage): FdImage['memfd'] {
  const size = f.file?.size ?? 0;
  if (size > MEMFD_MAX) {
    throw new TsnapError('unsupported', `fd ${f.fd} is a memfd of ${size} bytes; memfds over ${MEMFD_MAX >> 20} MiB are not checkpointed`);
  }
  return { name: '', data: Buffer.alloc(0), seals: 0, mode: 0 };
}

/** Whole contents, seals and name of the memfd behind a /proc magic link. */
export function readMemfd(link: string, what: string, path: string): { name: string; data: Buffer; seals: number; mode: number } {
  const fd = openSync(link, C.O_RDONLY | O_CLOEXEC);
  try {
    const st = fstatSync(fd);
    const size = st.size;
    if (size > MEMFD_MAX) {
      throw new TsnapError('unsupported', `${what} is a memfd of ${size} bytes; memfds over ${MEMFD_MAX >> 20} MiB are not checkpointed`);
    }
    const data = Buffer.alloc(size);
    for (let got = 0; got < size;) {
      const n = readSync(fd, data, got, size - got, got);
      if (n === 0) break;
      got += n;
    }
    let seals = 0;
    try { seals = fcntl(fd, F_GET_SEALS); } catch { /* sealing not allowed: no seals */ }
    const name = path.replace(/^\/memfd:/, '');
    return { name, data, seals, mode: st.mode & 0o7777 };
  } finally {
    closeSync(fd);
  }
}

/** Bytes waiting in the FIFO (FIONREAD). */
function queuedBytes(fd: number): number {
  const b = Buffer.alloc(4);
  ioctl(fd, FIONREAD, b, 'ioctl(FIONREAD)');
  return b.readInt32LE(0);
}

/** `path`: where to open it (a deleted FIFO's is the one fifo-ghost.ts made, or a /proc link to it). */
export function restoreFifo(rt: RemoteTask, group: FdImage[], floor: number, path = group[0].path!): void {
  const f = group[0];
  const keeper = openSync(path, C.O_RDWR | C.O_NONBLOCK | O_CLOEXEC);
  try {
    const flags = f.flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC) | O_NOCTTY | O_NONBLOCK;
    const tmp = rt.open(path, flags);
    rt.sc.check('fcntl(F_SETFL)', SYS.fcntl, tmp, F_SETFL, f.flags & SETFL_MASK);
    const data = f.fifo?.data;
    if (data && data.length > 0 && queuedBytes(keeper) === 0) {
      const n = writeSync(keeper, data);
      if (n !== data.length) throw new TsnapError('restoreFailed', `FIFO ${f.path}: only ${n} of ${data.length} buffered bytes fit back`);
    }
    placeFds(rt, [{ tmp, targets: group }], floor);
  } finally {
    closeSync(keeper);
  }
}

export function restoreMemfd(rt: RemoteTask, group: FdImage[], floor: number): void {
  const f = group[0];
  const tmp = createMemfdObject(rt, f.memfd!, floor);
  if (f.pos > 0) rt.sc.check('lseek(memfd)', SYS.lseek, tmp, f.pos, SEEK_SET);
  const flags = f.flags & SETFL_MASK;
  if (flags) rt.sc.check('fcntl(F_SETFL)', SYS.fcntl, tmp, F_SETFL, flags);
  placeFds(rt, [{ tmp, targets: group }], floor);
}

/** The memfds a process maps (MAP_SHARED or MAP_PRIVATE), each once, read through map_files. */
export function readMappedMemfds(pid: number, vmas: readonly { start: number; end: number; path: string; deleted: boolean; inode: number }[], ids: (i: number) => { dev: number; ino: number } | null): MemfdObjectImage[] {
  const out = new Map<string, MemfdObjectImage>();
  vmas.forEach((v, i) => {
    if (!isMemfdPath(v.path) || v.inode === 0) return;
    const id = ids(i);
    if (!id) throw new TsnapError('unsupported', `process ${pid} maps ${v.path} at 0x${v.start.toString(16)}, which cannot be read`);
    const key = `${id.dev}:${id.ino}`;
    if (out.has(key)) return;
    const m = readMemfd(`/proc/${pid}/map_files/${v.start.toString(16)}-${v.end.toString(16)}`, `the mapping at 0x${v.start.toString(16)}`, v.path);
    out.set(key, { dev: id.dev, ino: id.ino, ...m });
  });
  return [...out.values()];
}

export function isMemfdPath(path: string): boolean {
  return path.startsWith('/memfd:');
}

/**
 * Creates a memfd with the image's name, contents and seals inside the task
 * and leaves it at an fd at or above `floor`; returns that fd.
 */
export function createMemfdObject(rt: RemoteTask, m: { name: string; data: Buffer; seals: number; mode?: number }, floor: number): number {
  const name = rt.put(Buffer.from(`${m.name.slice(0, 249)}\0`), 1024);
  const tmp = Number(rt.sc.check(`memfd_create(${m.name})`, SYS.memfd_create, name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  const mine = openSync(`/proc/${rt.pid}/fd/${tmp}`, C.O_RDWR | O_CLOEXEC);
  try {
    ftruncateSync(mine, m.data.length);
    for (let at = 0; at < m.data.length;) at += writeSync(mine, m.data, at, m.data.length - at, at);
    // memfd_create makes it 0777: what the program set with fchmod comes back.
    if (m.mode !== undefined) fchmodSync(mine, m.mode);
  } finally {
    closeSync(mine);
  }
  if (m.seals) rt.sc.check('fcntl(F_ADD_SEALS)', SYS.fcntl, tmp, F_ADD_SEALS, m.seals);
  const hi = Number(rt.sc.check('fcntl(F_DUPFD_CLOEXEC)', SYS.fcntl, tmp, F_DUPFD_CLOEXEC, floor));
  rt.close(tmp);
  return hi;
}

/** An fd of a memfd that already exists in the tree (mapped): opened anew through /proc. */
export function reopenMemfd(rt: RemoteTask, group: FdImage[], floor: number, where: { pid: number; fd: number }): void {
  const f = group[0];
  const flags = f.flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC);
  const tmp = rt.open(`/proc/${where.pid}/fd/${where.fd}`, flags);
  if (f.pos > 0) rt.sc.check('lseek(memfd)', SYS.lseek, tmp, f.pos, SEEK_SET);
  placeFds(rt, [{ tmp, targets: group }], floor);
}

/**
 * A named FIFO, on any fd (0-2 too: a FIFO is never inherited stdio);
 * contents are read only when frozen. A deleted one is made again
 * (fifo-ghost.ts).
 */
export const fifoKind: FdKindModule = {
  describe(c, img) {
    img.fifo = c.frozen ? describeFifo(c.pid, img) : { capacity: 0, data: Buffer.alloc(0) };
    if (c.frozen && isFifoGhost(img)) img.fifo.ghost = describeFifoGhost(c.pid, img);
  },
  restorable: (f) => !!f.fifo,
  preflight: (f) => { if (!f.fifo?.ghost) checkReopenable(f); },
  restore(c, group) {
    if (group[0].fifo?.ghost) c.state('fifo-ghosts', () => new FifoGhosts()).restore(c.rt, group, c.floor, c.warn);
    else restoreFifo(c.rt, group, c.floor);
  },
};

export const memfdKind: FdKindModule = {
  describe: (c, img) => { img.memfd = c.frozen ? describeMemfd(c.pid, img) : checkMemfdSize(img); },
  restorable: (f) => !!f.memfd,
  restore(c, group) {
    const mapped = c.memfdAt(group[0]);
    if (mapped) reopenMemfd(c.rt, group, c.floor, mapped);
    else restoreMemfd(c.rt, group, c.floor);
  },
};

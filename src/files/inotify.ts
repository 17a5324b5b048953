/**
 * inotify instances. fdinfo lists each watch: its wd, the watched inode
 * (ino, sdev) with a file handle for it, and the mask. The dump turns the
 * handle into a path (open_by_handle_at, which root can do: it needs
 * CAP_DAC_READ_SEARCH); an inode that has no name any more is reached
 * through an fd of the process that holds it (a deleted file the image
 * makes again), else the dump is refused.
 *
 * Restore creates the instance with the files, and adds the watches last,
 * once every other file exists (so restore's own work queues no events),
 * in wd order: the kernel hands out wds cyclically, one more than the last
 * it gave, so a gap is crossed by adding and removing a watch on an inode
 * no real watch uses. What this leaves in the queue (IN_IGNORED of those)
 * is read away. Events queued at the dump are lost, as they are with CRIU.
 */
import { closeSync, lstatSync, openSync, readFileSync, readlinkSync, statSync, constants as C } from 'node:fs';
import { SYS, O_NONBLOCK, O_CLOEXEC, openByHandle, fileHandle, SysError } from '../sys/index.js';
import type { FdImage, InotifyWatchImage } from '../../formats/schema.js';
import { readFdInfo, type FdInfo } from '../proc/fds.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { placeFds } from './place.js';
import { TsnapError } from '../errors.js';

const O_PATH = 0o10000000;
const IN_DONT_FOLLOW = 0x02000000;
const IN_DELETE_SELF = 0x400;
const FIONREAD = 0x541b;

export function isInotify(link: string): boolean {
  return link === 'anon_inode:inotify';
}

interface RawWatch {
  wd: number;
  ino: number;
  /** The kernel's dev_t (major << 20 | minor). */
  sdev: number;
  mask: number;
  handleType: number;
  handle: Buffer;
}

function parseWatches(info: FdInfo): RawWatch[] {
  // forEachKeyValue cut each line at its first ':', so the key is "inotify wd".
  const lines = info.extra['inotify wd'];
  if (lines === undefined) return [];
  return lines.split('\n').map((l) => {
    const kv = new Map(`wd:${l}`.trim().split(/\s+/).map((p) => p.split(':') as [string, string]));
    const hex = (k: string) => {
      const v = kv.get(k);
      if (v === undefined || !/^[0-9a-f]+$/i.test(v)) throw new TsnapError('kernel', `fd ${info.fd}: unexpected inotify line "inotify wd:${l}" in fdinfo`);
      return v;
    };
    return {
      wd: parseInt(hex('wd'), 16),
      ino: parseInt(hex('ino'), 16),
      sdev: parseInt(hex('sdev'), 16),
      mask: parseInt(hex('mask'), 16),
      handleType: parseInt(kv.get('fhandle-type') ?? '-1', 16),
      handle: Buffer.from(kv.get('f_handle') ?? '', 'hex'),
    };
  }).sort((a, b) => a.wd - b.wd);
}

/** Userspace dev_t (what stat reports) of a kernel dev_t. */
function userDev(sdev: number): number {
  const major = sdev >>> 20;
  const minor = sdev & 0xfffff;
  return ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & ~0xff) << 12);
}

/** A directory tsnap can open on the filesystem of `sdev`: a mount of its root if there is one. */
function mountPointOf(sdev: number): string | null {
  const want = `${sdev >>> 20}:${sdev & 0xfffff}`;
  let best: string | null = null;
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f[2] !== want) continue;
    const point = f[4].replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
    if (f[3] === '/') return point;
    best ??= point;
  }
  return best;
}

/** The path of the watched inode now, when it still has one. */
function pathOf(w: RawWatch): string | null {
  const mnt = mountPointOf(w.sdev);
  if (!mnt || w.handle.length === 0) return null;
  let mfd = -1;
  let fd = -1;
  try {
    mfd = openSync(mnt, C.O_RDONLY | C.O_DIRECTORY);
    // O_PATH: opening it must not itself be an event the watches report.
    fd = openByHandle(mfd, w.handleType, w.handle, O_PATH | O_CLOEXEC);
    const link = readlinkSync(`/proc/self/fd/${fd}`);
    if (link.endsWith(' (deleted)')) return null;
    const st = lstatSync(link);
    return st.ino === w.ino && st.dev === userDev(w.sdev) ? link : null;
  } catch (err) {
    if (err instanceof SysError && (err.code === 'ESTALE' || err.code === 'ENOENT')) return null;
    if (err instanceof Error && 'code' in err && err.code === 'ENOENT') return null;
    throw err;
  } finally {
    if (fd >= 0) closeSync(fd);
    if (mfd >= 0) closeSync(mfd);
  }
}

/**
 * Every inotify of one process's fds (`fds`: all of them, read first: a
 * watch on an inode without a name is reached through another fd).
 */
export function describeInotifyFds(pid: number, fds: FdImage[]): void {
  const fileOf = (dev: number, ino: number) => fds.find((f) => f.file && f.file.dev === dev && f.file.ino === ino)?.fd;
  for (const f of fds) if (isInotify(f.link)) f.inotify = describeInotify(pid, readFdInfo(pid, f.fd), fileOf);
}

function describeInotify(pid: number, info: FdInfo, fileOf: (dev: number, ino: number) => number | undefined): FdImage['inotify'] {
  const watches = parseWatches(info).map((w): InotifyWatchImage => {
    const dev = userDev(w.sdev);
    const path = pathOf(w);
    // The handle tells a file from another that got the same inode number since.
    if (path !== null) return { wd: w.wd, mask: w.mask, dev, ino: w.ino, path, ...(w.handle.length ? { handle: w.handle } : {}) };
    const via = fileOf(dev, w.ino);
    if (via === undefined) {
      throw new TsnapError('unsupported', `fd ${info.fd} of process ${pid} is an inotify watching inode ${w.ino} of device ${dev >> 8}:${dev & 0xff} (wd ${w.wd}) whose path tsnap cannot find (deleted, or on a filesystem without file handles) and that no fd of the process holds; restore could not watch it again`);
    }
    return { wd: w.wd, mask: w.mask, dev, ino: w.ino, path: null, via };
  });
  return { watches };
}

/** Restore, with the files: the instance alone (its watches come last, addInotifyWatches). */
export function restoreInotify(rt: RemoteTask, group: FdImage[], floor: number): void {
  const f = group[0];
  const tmp = Number(rt.sc.check('inotify_init1', SYS.inotify_init1, (f.flags & O_NONBLOCK) | O_CLOEXEC));
  placeFds(rt, [{ tmp, targets: group }], floor);
}

/** Before anything is created: every watched path is still the inode it was. */
export function checkInotifyRestorable(f: FdImage): void {
  for (const w of f.inotify!.watches) {
    if (w.path === null) continue;
    let st;
    try { st = lstatSync(w.path); } catch { st = null; }
    if (!st || st.ino !== w.ino || st.dev !== w.dev || (w.handle && !sameHandle(w.path, w.handle))) {
      throw new TsnapError('restoreFailed', `fd ${f.fd} (inotify) watched ${w.path} (wd ${w.wd}), which is ${st ? 'another file now' : 'gone'}; restore could not watch it again`);
    }
  }
}

function sameHandle(path: string, handle: Buffer): boolean {
  try {
    const now = fileHandle(path);
    return now === null || now.handle.equals(handle);
  } catch {
    return false;
  }
}

/** A path no watch of `f` is on, for the watches that only fill a gap in the wds. */
function spareInode(f: FdImage): string {
  const used = new Set(f.inotify!.watches.map((w) => `${w.dev}:${w.ino}`));
  for (const p of ['/', '/proc', '/dev', '/sys', '/run', '/etc', '/usr']) {
    try {
      const st = statSync(p);
      if (!used.has(`${st.dev}:${st.ino}`)) return p;
    } catch { /* not on this system */ }
  }
  throw new TsnapError('restoreFailed', `fd ${f.fd} (inotify): no spare inode to skip wd numbers with`);
}

export function addInotifyWatches(rt: RemoteTask, f: FdImage): void {
  const watches = f.inotify!.watches;
  if (watches.length === 0) return;
  const spare = spareInode(f);
  let next = 1;
  let skipped = false;
  const add = (path: string, mask: number) => Number(rt.sc.check(`inotify_add_watch(${f.fd}, ${path})`, SYS.inotify_add_watch, f.fd, rt.put(Buffer.from(`${path}\0`)), mask));
  for (const w of watches) {
    while (next < w.wd) {
      const wd = add(spare, IN_DELETE_SELF | IN_DONT_FOLLOW);
      rt.sc.check(`inotify_rm_watch(${f.fd}, ${wd})`, SYS.inotify_rm_watch, f.fd, wd);
      next = wd + 1;
      skipped = true;
    }
    // A path names the inode itself (it may be a symlink watched as such);
    // /proc/self/fd/N must be followed to the file it holds.
    const wd = w.path !== null ? add(w.path, w.mask | IN_DONT_FOLLOW) : add(`/proc/self/fd/${w.via}`, w.mask);
    if (wd !== w.wd) throw new TsnapError('restoreFailed', `fd ${f.fd} (inotify): the watch on ${w.path ?? `fd ${w.via}`} came back as wd ${wd}, the image's ${w.wd}`);
    next = wd + 1;
  }
  if (skipped) drain(rt, f.fd);
}

/** Reads away the queued events (only what restore itself caused is there). */
function drain(rt: RemoteTask, fd: number): void {
  for (;;) {
    rt.sc.check(`ioctl(${fd}, FIONREAD)`, SYS.ioctl, fd, FIONREAD, rt.put(Buffer.alloc(4)));
    const n = rt.get(4).readInt32LE(0);
    if (n <= 0) return;
    // The read returns the whole events that fit.
    rt.sc.check(`read(${fd})`, SYS.read, fd, rt.scratch, Math.min(n, rt.scratchSize));
  }
}

/** Restore's self-check: the rebuilt instance watches what the image says (null when it does). */
export function inotifyDiff(f: FdImage, info: FdInfo): string | null {
  if (!f.inotify) return null;
  const have = parseWatches(info).map((w) => `${w.wd}:${w.mask.toString(16)}`).join(' ');
  const want = f.inotify.watches.map((w) => `${w.wd}:${w.mask.toString(16)}`).join(' ');
  return have === want ? null : `fd ${f.fd} (inotify) watches [${have}] (wd:mask), the image's [${want}]`;
}

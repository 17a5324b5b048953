/**
 * O_PATH | O_NOFOLLOW fds on a symlink (the link itself, not its target).
 * The dump keeps what the link says and who owns it; restore opens it by
 * path again, or, for a link deleted while open, makes one with the same
 * contents at its path (another name beside it if the path is taken),
 * opens it and unlinks it at once.
 */
import { closeSync, existsSync, fstatSync, lchownSync, lstatSync, readlinkSync, symlinkSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import { pidfdOpen, pidfdGetfd, readlinkFd, O_CLOEXEC } from '../sys/index.js';
import type { FdImage } from '../../formats/schema.js';
import type { FdTarget } from '../proc/fds.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { placeFds } from './place.js';
import { TsnapError } from '../errors.js';

const S_IFMT = 0o170000;
const S_IFLNK = 0o120000;
const O_PATH = 0o10000000;
const O_NOFOLLOW = 0o400000;

export function isSymlinkFd(t: FdTarget): boolean {
  return t.path !== null && (t.mode & S_IFMT) === S_IFLNK;
}

/** Reads the link through tsnap's own copy of the fd (its path may be gone). */
export function describeSymlink(pidfd: number, img: FdImage, t: FdTarget): FdImage['symlink'] {
  const copy = pidfdGetfd(pidfd, img.fd);
  try {
    const st = fstatSync(copy); // of the link itself: an O_PATH fd names it
    return { target: readlinkFd(copy), ino: t.ino, uid: st.uid, gid: st.gid };
  } finally {
    closeSync(copy);
  }
}

export function checkSymlink(f: FdImage, pid: number, tree: boolean): void {
  const of = tree ? ` of process ${pid}` : '';
  if (!(f.flags & O_PATH)) throw new TsnapError('unsupported', `fd ${f.fd}${of} is the symlink ${f.path} opened without O_PATH; tsnap cannot checkpoint it`);
  if (isDeleted(f)) {
    if (!existsSync(dirname(f.path!))) throw new TsnapError('unsupported', `fd ${f.fd}${of} is the symlink ${f.path} (deleted) and its directory is gone too; restore could not make it again`);
  }
}

function isDeleted(f: FdImage): boolean {
  return / \(deleted\)$/.test(f.link);
}

/** Before anything is created: a link that is still expected by path must say what it said. */
export function checkSymlinkRestorable(f: FdImage): void {
  if (isDeleted(f)) {
    if (!existsSync(dirname(f.path!))) throw new TsnapError('restoreFailed', `fd ${f.fd}: the directory of the deleted symlink ${f.path} is gone; restore could not make it again`);
    return;
  }
  let now: string;
  try {
    now = lstatSync(f.path!).isSymbolicLink() ? readlinkSync(f.path!) : '';
  } catch {
    throw new TsnapError('restoreFailed', `fd ${f.fd}: the symlink ${f.path} is missing; restore needs the files the process had open`);
  }
  if (now !== f.symlink!.target) throw new TsnapError('restoreFailed', `fd ${f.fd}: ${f.path} is no longer the symlink to ${f.symlink!.target} it was at the dump`);
}

export function restoreSymlink(rt: RemoteTask, group: FdImage[], floor: number): void {
  const f = group[0];
  const s = f.symlink!;
  const flags = (f.flags & ~O_CLOEXEC) | O_PATH | O_NOFOLLOW;
  if (!isDeleted(f)) {
    placeFds(rt, [{ tmp: rt.open(f.path!, flags), targets: group }], floor);
    return;
  }
  const name = existsSync(f.path!) || isDangling(f.path!) ? `${f.path}.tsnap-${randomBytes(4).toString('hex')}` : f.path!;
  symlinkSync(s.target, name);
  let tmp: number;
  try {
    lchownSync(name, s.uid, s.gid);
    tmp = rt.open(name, flags);
  } finally {
    unlinkSync(name);
  }
  placeFds(rt, [{ tmp, targets: group }], floor);
}

/** existsSync follows links: a dangling one at the path is taken too. */
function isDangling(path: string): boolean {
  try { lstatSync(path); return true; } catch { return false; }
}

/** Restore's self-check: the restored fd is a symlink that says what the image's did (null when it is). */
export function symlinkDiff(pid: number, f: FdImage): string | null {
  if (!f.symlink) return null;
  const pidfd = pidfdOpen(pid);
  try {
    const copy = pidfdGetfd(pidfd, f.fd);
    try {
      const target = (fstatSync(copy).mode & S_IFMT) === S_IFLNK ? readlinkFd(copy) : null;
      return target === f.symlink.target ? null : `fd ${f.fd} (${f.link}) is ${target === null ? 'not a symlink' : `a symlink to ${target}`}, the image's to ${f.symlink.target}`;
    } finally {
      closeSync(copy);
    }
  } finally {
    closeSync(pidfd);
  }
}

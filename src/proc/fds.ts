/** /proc/PID/fd and /proc/PID/fdinfo: what each open descriptor refers to and how it was opened. */
import * as fs from 'node:fs';
import type { FdKindImage } from '../../formats/schema.js';
import { forEachKeyValue, procError, procPath, readProcNumericDir, readProcText, splitDeleted } from './read.js';

export function listFds(pid: number): number[] {
  return readProcNumericDir(pid, 'fd');
}

export interface FdInfo {
  fd: number;
  pos: number;
  /**
   * open(2) flags. The kernel folds the per-descriptor close-on-exec bit in
   * as O_CLOEXEC (0o2000000), and adds O_LARGEFILE (0o100000) on 64-bit.
   */
  flags: number;
  mntId: number;
  ino: number;
  /**
   * Type-specific lines (eventfd-count, tfd, sigmask, lock, ...), keyed by the
   * text before the first ':'. Keys that repeat (one epoll "tfd" line per
   * watched fd, inotify watches, locks) are joined with '\n' in order.
   */
  extra: Record<string, string>;
}

export function parseFdInfo(fd: number, text: string): FdInfo {
  const info: FdInfo = { fd, pos: NaN, flags: NaN, mntId: NaN, ino: NaN, extra: {} };
  forEachKeyValue(text, (rawKey, rawValue) => {
    const key = rawKey.trim();
    const value = rawValue.trim();
    switch (key) {
      case 'pos':
        info.pos = Number(value);
        break;
      case 'flags':
        info.flags = parseInt(value, 8);
        break;
      case 'mnt_id':
        info.mntId = Number(value);
        break;
      case 'ino':
        info.ino = Number(value);
        break;
      default: {
        const prev = info.extra[key];
        info.extra[key] = prev === undefined ? value : `${prev}\n${value}`;
      }
    }
  });
  if (Number.isNaN(info.pos) || Number.isNaN(info.flags)) {
    throw new Error(`malformed /proc/PID/fdinfo/${fd}: ${JSON.stringify(text.slice(0, 80))}`);
  }
  return info;
}

export function readFdInfo(pid: number, fd: number): FdInfo {
  return parseFdInfo(fd, readProcText(pid, `fdinfo/${fd}`));
}

/** The kinds /proc tells apart are the image format's: one list (formats/schema.ts). */
export type FdKind = FdKindImage;

export interface FdTarget {
  fd: number;
  kind: FdKind;
  /** readlink of /proc/PID/fd/N, verbatim. */
  link: string;
  /** Filesystem path (without ' (deleted)') when the object has one; null for pipes, sockets, anon inodes, namespaces. */
  path: string | null;
  deleted: boolean;
  /** Of the object itself (stat through the magic link), not of the /proc entry. */
  dev: number;
  ino: number;
  mode: number;
  rdev: number;
  size: number;
}

const { S_IFMT, S_IFREG, S_IFDIR, S_IFCHR, S_IFBLK, S_IFIFO } = fs.constants;

// Linux major numbers (linux/major.h values, which are ABI): 4 = tty0..N and
// ttyS*, 5 = /dev/tty, /dev/console, /dev/ptmx, 136..143 = /dev/pts/* (the
// Unix98 pty slave range spans 8 majors once pts numbers pass 1M).
const MEM_MAJOR = 1;
const DEVNULL_MINOR = 3;
function isTtyMajor(major: number): boolean {
  return major === 4 || major === 5 || (major >= 136 && major <= 143);
}

/**
 * Userspace dev_t layout (12-bit major split around an 8-bit minor low part),
 * which is what Node's stat reports: libuv rebuilds st_rdev with makedev().
 */
export function devMajor(dev: number): number {
  return Number(((BigInt(dev) >> 8n) & 0xfffn) | ((BigInt(dev) >> 32n) & ~0xfffn));
}
export function devMinor(dev: number): number {
  return Number((BigInt(dev) & 0xffn) | ((BigInt(dev) >> 12n) & ~0xffn));
}

function classify(link: string, mode: number, rdev: number): { kind: FdKind; hasPath: boolean } {
  // Objects with no place in the filesystem are recognised by the link text;
  // their st_mode alone would be ambiguous (a pipe and a FIFO are both S_IFIFO).
  if (link.startsWith('pipe:[')) return { kind: 'pipe', hasPath: false };
  if (link.startsWith('socket:[')) return { kind: 'socket', hasPath: false };
  if (link.startsWith('anon_inode:')) {
    const what = link.slice('anon_inode:'.length).replace(/^\[|\]$/g, '');
    const known: Record<string, FdKind> = { eventfd: 'eventfd', eventpoll: 'epoll', timerfd: 'timerfd', signalfd: 'signalfd' };
    return { kind: known[what] ?? 'anon_inode', hasPath: false };
  }
  if (link.startsWith('/memfd:')) return { kind: 'memfd', hasPath: true };
  // Namespace fds ("net:[4026531840]") and anything else not rooted at '/'.
  if (!link.startsWith('/')) return { kind: 'other', hasPath: false };
  switch (mode & S_IFMT) {
    case S_IFREG:
      return { kind: 'file', hasPath: true };
    case S_IFDIR:
      return { kind: 'dir', hasPath: true };
    case S_IFIFO:
      return { kind: 'fifo', hasPath: true };
    case S_IFBLK:
      return { kind: 'blockdev', hasPath: true };
    case S_IFCHR: {
      const major = devMajor(rdev);
      if (major === MEM_MAJOR && devMinor(rdev) === DEVNULL_MINOR) return { kind: 'devnull', hasPath: true };
      if (isTtyMajor(major)) return { kind: 'tty', hasPath: true };
      return { kind: 'chardev', hasPath: true };
    }
    default:
      return { kind: 'other', hasPath: true };
  }
}

export function readFdTarget(pid: number, fd: number): FdTarget {
  const path = procPath(pid, `fd/${fd}`);
  let link: string;
  let st: fs.Stats;
  try {
    link = fs.readlinkSync(path);
  } catch (err) {
    throw procError('readlink', path, err);
  }
  try {
    // stat follows the magic link to the open object itself, even if it has
    // been unlinked or was never in the filesystem (pipefs, sockfs).
    st = fs.statSync(path);
  } catch (err) {
    throw procError('stat', path, err);
  }
  const { kind, hasPath } = classify(link, st.mode, st.rdev);
  const { path: stripped, deleted } = splitDeleted(link);
  return {
    fd,
    kind,
    link,
    path: hasPath ? stripped : null,
    deleted,
    dev: st.dev,
    ino: st.ino,
    mode: st.mode,
    rdev: st.rdev,
    size: st.size,
  };
}

/** The pid of a /proc/PID/... path, or null. */
export function procPidOf(path: string | null): number | null {
  const m = path ? /^\/proc\/(\d+)(\/|$)/.exec(path) : null;
  return m ? Number(m[1]) : null;
}

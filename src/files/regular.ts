/**
 * Files with a path (regular files, directories, character devices,
 * /dev/null): opened again by path with their flags, at their offset.
 */
import { statSync } from 'node:fs';
import { SYS, SEEK_SET, O_CLOEXEC, O_CREAT, O_EXCL, O_TRUNC, O_NOCTTY } from '../sys/index.js';
import type { FdImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { placeFds } from './place.js';
import { TsnapError } from '../errors.js';
import type { FdKindModule } from './kind.js';
import { isGhost, checkGhost, describeGhost } from './ghost.js';
import { procPidOf } from '../proc/fds.js';

/** __O_TMPFILE | O_DIRECTORY. */
const O_TMPFILE = 0o20200000;

export const REOPENED = new Set(['file', 'dir', 'devnull', 'chardev']);

export function checkReopenable(f: FdImage): void {
  if (f.file?.deleted) {
    // A deleted file or directory the image holds is made again (ghost.ts).
    if (f.ghost && (f.kind === 'file' || f.kind === 'dir')) return;
    throw new TsnapError('restoreFailed', `fd ${f.fd}: ${f.path} was deleted before the dump; it cannot be reopened`);
  }
  // /proc/PID/...: that process is part of the image (the dump checked) and
  // exists only once restore made it; procfs inodes change anyway.
  if (/^\/proc\/\d+(\/|$)/.test(f.path ?? '')) return;
  let st;
  try {
    st = statSync(f.path!);
  } catch {
    throw new TsnapError('restoreFailed', `fd ${f.fd}: ${f.path} is missing; restore needs the files the process had open`);
  }
  if (f.kind === 'file' && f.file && st.ino !== f.file.ino) {
    throw new TsnapError('restoreFailed', `fd ${f.fd}: ${f.path} was replaced since the dump (inode ${f.file.ino} -> ${st.ino})`);
  }
}

/** `path`: where to open it (a deleted file's is the ghost restore made). */
export function restoreReopened(rt: RemoteTask, group: FdImage[], floor: number, path = group[0].path!): void {
  const f = group[0];
  // Reopening must not create, truncate or take a controlling terminal; a
  // file made with O_TMPFILE (which includes O_DIRECTORY) is opened as the
  // file it is now.
  const tmpfile = f.kind === 'file' ? O_TMPFILE : 0;
  const flags = f.flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC | tmpfile) | O_NOCTTY;
  const tmp = rt.open(path, flags);
  if (f.kind === 'file' && f.pos > 0) rt.sc.check(`lseek(${f.fd})`, SYS.lseek, tmp, f.pos, SEEK_SET);
  placeFds(rt, [{ tmp, targets: group }], floor);
}

/**
 * Files with a path: regular files, directories, devices other than ttys,
 * /dev/null. A deleted file or directory is stored whole (ghost.ts).
 */
export const reopenedKind: FdKindModule = {
  describe(c, img) {
    if (!isGhost(img)) return;
    if (c.frozen) img.ghost = describeGhost(c.pid, img, c.ghosts, c.ghostLimit);
    else checkGhost(img, c.pid, c.ghostLimit);
  },
  checkDump(f, c) {
    const of = c.pids.length > 1 ? ` of process ${c.pid}` : '';
    if (f.file?.deleted && !isGhost(f)) throw new TsnapError('unsupported', `fd ${f.fd}${of} is ${f.path} (a ${f.kind}), deleted while open; tsnap can restore deleted files and directories only`);
    // A file of another process's /proc directory opens again only if that process comes back too.
    const proc = procPidOf(f.path);
    // Init (pid 1) is always there again.
    if (proc !== null && proc !== 1 && !c.pids.includes(proc)) {
      throw new TsnapError('unsupported', `fd ${f.fd}${of} is ${f.path}, of a process outside the dump; restore could not open it again (dump that process with --tree)`);
    }
  },
  restorable: () => true,
  preflight: checkReopenable,
  restore(c, group) {
    restoreReopened(c.rt, group, c.floor, isGhost(group[0]) ? c.ghostPath(group[0]) : group[0].path!);
  },
};

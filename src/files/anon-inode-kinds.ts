/**
 * The kinds /proc shows only as "anon_inode:[...]" or as a non-path link
 * ("other"), told apart by what their describe found: pidfds and inotify
 * instances (anon_inode), O_PATH fds on symlinks and namespace fds (other).
 * One module per kind does the work; these route to it.
 */
import type { FdKindModule } from './kind.js';
import { isPidfd, describePidfd, checkPidfd, isThreadPidfd, restorePidfd } from './pidfd.js';
import { checkInotifyRestorable, restoreInotify, addInotifyWatches } from './inotify.js';
import { isSymlinkFd, describeSymlink, checkSymlink, checkSymlinkRestorable, restoreSymlink } from './symlink.js';
import { isNsfd, describeNsfd, checkNsfdRestorable, restoreNsfd } from './nsfs.js';
import { TsnapError } from '../errors.js';

/** pidfds and inotify (whose watches dump/fds.ts reads per process: describeInotifyFds). */
export const anonInodeKind: FdKindModule = {
  describe(c, img) {
    if (isPidfd(c.target)) img.pidfd = describePidfd(c.info, c.target);
  },
  checkDump(f, c) {
    if (f.pidfd) checkPidfd(f, c.pid, c.pids, c.zombies);
  },
  restorable: (f) => !!f.pidfd || !!f.inotify,
  preflight(f) {
    if (f.inotify) checkInotifyRestorable(f);
  },
  restore(c, group) {
    const f = group[0];
    if (f.inotify) { restoreInotify(c.rt, group, c.floor); return; }
    // A reaped process's pidfd is imported from tsnap (FdRestorer.prepare), a thread's made late.
    if (!f.pidfd || f.pidfd.pid === -1 || isThreadPidfd(f)) throw new TsnapError('badImage', `fd ${f.fd}: a pidfd restore has nothing to open on`);
    restorePidfd(c.rt, group, c.floor, c.pidNow(f.pidfd.pid));
  },
  late(c, f) {
    if (f.inotify) addInotifyWatches(c.rt, f);
  },
};

export const otherKind: FdKindModule = {
  describe(c, img) {
    if (isSymlinkFd(c.target)) img.symlink = describeSymlink(c.pidfd, img, c.target);
    else if (isNsfd(c.target)) img.nsfs = describeNsfd(c.pid, img, c.target);
  },
  checkDump(f, c) {
    if (f.symlink) checkSymlink(f, c.pid, c.pids.length > 1);
  },
  restorable: (f) => !!f.symlink || !!f.nsfs,
  preflight(f) {
    if (f.symlink) checkSymlinkRestorable(f);
    else if (f.nsfs) checkNsfdRestorable(f);
  },
  restore(c, group) {
    if (group[0].symlink) restoreSymlink(c.rt, group, c.floor);
    else restoreNsfd(c.rt, group, c.floor);
  },
};

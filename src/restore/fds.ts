/**
 * File descriptors at their original numbers. Regular files, directories and
 * character devices are reopened by path with their flags and offset. Pipes,
 * ttys and sockets on 0-2 are the restored process's stdio: they are whatever
 * tsnap restore was given (its own stdio by default, or --stdin/--stdout/
 * --stderr files), inherited from the helper.
 */
import { statSync } from 'node:fs';
import { SYS, SEEK_SET, O_CLOEXEC, O_CREAT, O_EXCL, O_TRUNC, O_NOCTTY } from '../sys/index.js';
import { listFds } from '../proc/index.js';
import type { FdImage } from '../../formats/schema.js';
import type { RemoteTask } from './remote-task.js';
import { TsnapError } from '../errors.js';

const REOPEN = new Set(['file', 'dir', 'devnull', 'chardev']);
const STDIO = new Set(['tty', 'pipe', 'fifo', 'socket']);
const F_SETFD = 2;
const FD_CLOEXEC = 1;

/** Refuses what restore cannot bring back, before anything is created. */
export function checkFds(fds: FdImage[]): void {
  for (const f of fds) {
    if (REOPEN.has(f.kind)) {
      if (f.file?.deleted) throw new TsnapError('restoreFailed', `fd ${f.fd}: ${f.path} was deleted before the dump; it cannot be reopened`);
      let st;
      try {
        st = statSync(f.path!);
      } catch {
        throw new TsnapError('restoreFailed', `fd ${f.fd}: ${f.path} is missing; restore needs the files the process had open`);
      }
      if (f.kind === 'file' && f.file && st.ino !== f.file.ino) {
        throw new TsnapError('restoreFailed', `fd ${f.fd}: ${f.path} was replaced since the dump (inode ${f.file.ino} -> ${st.ino})`);
      }
      continue;
    }
    if (STDIO.has(f.kind) && f.fd <= 2) continue;
    throw new TsnapError('unsupported', `fd ${f.fd} is a ${f.kind} (${f.link}); restoring this kind of fd is not supported yet`);
  }
}

export function restoreFds(rt: RemoteTask, fds: FdImage[]): void {
  const wanted = new Set(fds.map((f) => f.fd));
  for (const f of [...fds].sort((a, b) => a.fd - b.fd)) {
    if (!REOPEN.has(f.kind)) continue; // stdio: inherited
    const flags = f.flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC) | O_NOCTTY;
    const tmp = rt.open(f.path!, flags);
    if (tmp !== f.fd) {
      rt.sc.check(`dup3(${tmp}, ${f.fd})`, SYS.dup3, tmp, f.fd, f.flags & O_CLOEXEC);
      rt.close(tmp);
    } else if (!(f.flags & O_CLOEXEC)) {
      rt.sc.check(`fcntl(${f.fd}, F_SETFD)`, SYS.fcntl, f.fd, F_SETFD, 0);
    } else {
      rt.sc.check(`fcntl(${f.fd}, F_SETFD)`, SYS.fcntl, f.fd, F_SETFD, FD_CLOEXEC);
    }
    if (f.kind === 'file' && f.pos > 0) rt.sc.check(`lseek(${f.fd})`, SYS.lseek, f.fd, f.pos, SEEK_SET);
  }
  // Whatever the helper had that the process did not, goes.
  for (const fd of listFds(rt.pid)) if (!wanted.has(fd)) rt.close(fd);
}

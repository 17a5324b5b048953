/**
 * epoll instances and what they watch. fdinfo lists each registration as
 * the fd number it was added under; dump checks with kcmp that this number
 * still names the registered file (a registration outlives close() of its
 * fd while a dup keeps the file open, and could not be rebuilt by number).
 * Restore creates every epoll after all other fds exist, then registers.
 */
import { SYS, O_CLOEXEC, EPOLL_CTL_ADD, isEpollTarget } from '../sys/index.js';
import type { EpollTargetImage, FdImage } from '../../formats/schema.js';
import type { FdInfo } from '../proc/fds.js';
import type { RemoteTask } from '../restore/remote-task.js';
import { placeFds } from './place.js';
import { TsnapError } from '../errors.js';
import type { FdKindModule } from './kind.js';

/**
 * `pid`: the process whose fd `info.fd` is the epoll; `filesPid`: the one
 * whose fd numbers it watches (they differ for an epoll in flight in a unix
 * socket, which tsnap holds while the numbers are the dumped process's).
 */
export function describeEpoll(pid: number, info: FdInfo, openFds: Set<number>, filesPid = pid): FdImage['epoll'] {
  const lines = info.extra.tfd === undefined ? [] : info.extra.tfd.split('\n');
  const targets = lines.map((l): EpollTargetImage => {
    const m = /^\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)/.exec(l);
    if (!m) throw new TsnapError('kernel', `fd ${info.fd}: unexpected epoll line "tfd: ${l}" in fdinfo`);
    return { fd: Number(m[1]), events: parseInt(m[2], 16), data: BigInt(`0x${m[3]}`) };
  });
  for (const t of targets) {
    if (!openFds.has(t.fd) || !isEpollTarget(filesPid, t.fd, info.fd, t.fd, pid)) {
      throw new TsnapError('unsupported', `fd ${info.fd} (epoll) watches a file that is no longer open as fd ${t.fd} (closed after a dup); such an epoll cannot be rebuilt`);
    }
  }
  return { targets };
}

export function createEpoll(rt: RemoteTask, group: FdImage[], floor: number): void {
  const tmp = Number(rt.sc.check('epoll_create1', SYS.epoll_create1, O_CLOEXEC));
  placeFds(rt, [{ tmp, targets: group }], floor);
}

export function registerEpollTargets(rt: RemoteTask, f: FdImage): void {
  for (const t of f.epoll!.targets) {
    // struct epoll_event is packed on x86-64: u32 events, u64 data.
    const ev = Buffer.alloc(12);
    ev.writeUInt32LE(t.events >>> 0, 0);
    ev.writeBigUInt64LE(t.data, 4);
    rt.sc.check(`epoll_ctl(${f.fd}, ADD, ${t.fd})`, SYS.epoll_ctl, f.fd, EPOLL_CTL_ADD, t.fd, rt.put(ev));
  }
}

export const epollKind: FdKindModule = {
  describe: (c, img) => { img.epoll = describeEpoll(c.pid, c.info, c.open, c.filesPid); },
  restorable: (f) => !!f.epoll,
  restore: (c, group) => createEpoll(c.rt, group, c.floor),
  link: (c, f) => registerEpollTargets(c.rt, f),
};

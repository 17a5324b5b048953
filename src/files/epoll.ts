/**
 * epoll instances and what they watch. The kernel keys a registration by
 * (file, fd number it was added under), and fdinfo lists the number only;
 * the number may since have been closed (a dup keeps the file open) or
 * reused by another file. So dump finds, with kcmp(KCMP_EPOLL_TFD), which
 * fd of the process holds each registered file: the fd of the same number
 * when it still is that file, else another one (`via`); a file no fd holds
 * any more is refused.
 *
 * Restore creates every epoll after all other fds exist, then registers:
 * a target known by another fd is put at its registration number for the
 * time of the EPOLL_CTL_ADD (whatever holds that number is moved aside and
 * back), so the kernel keys it as the original.
 */
import { statSync } from 'node:fs';
import { SYS, O_CLOEXEC, EPOLL_CTL_ADD, F_DUPFD_CLOEXEC, isEpollTarget, SysError } from '../sys/index.js';
import type { EpollTargetImage, FdImage } from '../../formats/schema.js';
import type { FdInfo } from '../proc/fds.js';
import type { RemoteTask } from '../inject/remote-task.js';
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
  const seen = new Map<number, number>();
  const inos = new Map<number, number | null>();
  const inoOf = (fd: number) => {
    if (!inos.has(fd)) { try { inos.set(fd, statSync(`/proc/${filesPid}/fd/${fd}`).ino); } catch { inos.set(fd, null); } }
    return inos.get(fd);
  };
  const targets = lines.map((l): EpollTargetImage => {
    const m = /^\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)/.exec(l);
    if (!m) throw new TsnapError('kernel', `fd ${info.fd}: unexpected epoll line "tfd: ${l}" in fdinfo`);
    const t: EpollTargetImage = { fd: Number(m[1]), events: parseInt(m[2], 16), data: BigInt(`0x${m[3]}`) };
    // The n-th registration under this number, in the order fdinfo lists them (kcmp's toff).
    const toff = seen.get(t.fd) ?? 0;
    seen.set(t.fd, toff + 1);
    if (openFds.has(t.fd) && holds(filesPid, t.fd, info.fd, t.fd, toff, pid)) return t;
    // Only fds on the registered inode can be the file: kcmp just those.
    const ino = /\bino:([0-9a-f]+)/.exec(l);
    const candidates = [...openFds].filter((fd) => fd !== info.fd && (!ino || inoOf(fd) === parseInt(ino[1], 16)));
    const via = candidates.find((fd) => holds(filesPid, fd, info.fd, t.fd, toff, pid));
    if (via === undefined) {
      throw new TsnapError('unsupported', `fd ${info.fd} (epoll) watches a file registered as fd ${t.fd} that no fd of process ${filesPid} holds any more (only the epoll keeps it); such an epoll cannot be rebuilt`);
    }
    return { ...t, via };
  });
  return { targets };
}

/** Before the freeze the process runs on: an fd it closed meanwhile holds nothing. */
function holds(pid: number, fd: number, epfd: number, tfd: number, toff: number, epollPid = pid): boolean {
  try {
    return isEpollTarget(pid, fd, epfd, tfd, toff, epollPid);
  } catch (err) {
    if (err instanceof SysError && err.code === 'EBADF') return false;
    throw err;
  }
}

export function createEpoll(rt: RemoteTask, group: FdImage[], floor: number): void {
  const tmp = Number(rt.sc.check('epoll_create1', SYS.epoll_create1, O_CLOEXEC));
  placeFds(rt, [{ tmp, targets: group }], floor);
}

/** `fds`: every fd of the process (a target put at its number moves what is there aside). */
export function registerEpollTargets(rt: RemoteTask, f: FdImage, fds: FdImage[]): void {
  const floor = Math.max(2, ...fds.map((x) => x.fd)) + 1;
  for (const t of f.epoll!.targets) {
    // struct epoll_event is packed on x86-64: u32 events, u64 data.
    const ev = Buffer.alloc(12);
    ev.writeUInt32LE(t.events >>> 0, 0);
    ev.writeBigUInt64LE(t.data, 4);
    const add = () => rt.sc.check(`epoll_ctl(${f.fd}, ADD, ${t.fd})`, SYS.epoll_ctl, f.fd, EPOLL_CTL_ADD, t.fd, rt.put(ev));
    if (t.via === undefined) { add(); continue; }
    const occupant = fds.find((x) => x.fd === t.fd);
    const aside = occupant ? Number(rt.sc.check(`fcntl(${t.fd}, F_DUPFD_CLOEXEC)`, SYS.fcntl, t.fd, F_DUPFD_CLOEXEC, floor)) : -1;
    rt.sc.check(`dup3(${t.via}, ${t.fd})`, SYS.dup3, t.via, t.fd, O_CLOEXEC);
    add();
    if (occupant) {
      rt.sc.check(`dup3(${aside}, ${t.fd})`, SYS.dup3, aside, t.fd, occupant.flags & O_CLOEXEC);
      rt.close(aside);
    } else {
      rt.close(t.fd);
    }
  }
}

/** Restore's self-check: the rebuilt epoll has the image's registrations (null when it does). */
export function epollDiff(f: FdImage, info: FdInfo): string | null {
  if (!f.epoll) return null;
  const key = (fd: number, events: number, data: bigint) => `${fd}:${events.toString(16)}:${data.toString(16)}`;
  const have = (info.extra.tfd ?? '').split('\n').filter((l) => l.trim()).map((l) => {
    const m = /^\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)/.exec(l);
    return m ? key(Number(m[1]), parseInt(m[2], 16), BigInt(`0x${m[3]}`)) : l;
  }).sort();
  const want = f.epoll.targets.map((t) => key(t.fd, t.events, t.data)).sort();
  if (have.join(' ') === want.join(' ')) return null;
  return `fd ${f.fd} (epoll) has ${have.length} registrations, ${want.filter((w) => !have.includes(w)).length} of the image's ${want.length} missing`;
}

export const epollKind: FdKindModule = {
  describe: (c, img) => { img.epoll = describeEpoll(c.pid, c.info, c.open, c.filesPid); },
  restorable: (f) => !!f.epoll,
  restore: (c, group) => createEpoll(c.rt, group, c.floor),
  link: (c, f) => registerEpollTargets(c.rt, f, c.fds),
};

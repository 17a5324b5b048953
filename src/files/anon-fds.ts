/**
 * eventfd, timerfd and signalfd: their whole state is in fdinfo, and each is
 * recreated with its own syscall (plus a write or an ioctl for the counter).
 */
import { SYS, O_CLOEXEC, O_NONBLOCK, EFD_SEMAPHORE, TFD_IOC_SET_TICKS } from '../sys/index.js';
import type { FdImage, TimerfdImage } from '../../formats/schema.js';
import type { FdInfo } from '../proc/fds.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { placeFds } from './place.js';
import { TsnapError } from '../errors.js';
import type { FdKindModule } from './kind.js';

function field(info: FdInfo, key: string, fd: number): string {
  const v = info.extra[key];
  if (v === undefined) throw new TsnapError('kernel', `fd ${fd}: fdinfo has no "${key}" line; this kernel's format is not understood`);
  return v;
}

export function describeEventfd(info: FdInfo): FdImage['eventfd'] {
  // The kernel prints the count in hex ("%16llx").
  const hex = field(info, 'eventfd-count', info.fd).trim();
  if (!/^[0-9a-f]{1,16}$/.test(hex)) throw new TsnapError('unsupported', `fd ${info.fd}: unreadable eventfd-count "${hex}" in fdinfo`);
  return { count: BigInt(`0x${hex}`), semaphore: info.extra['eventfd-semaphore']?.trim() === '1' };
}

/** "(sec, nsec)" as printed for it_value / it_interval. */
function parseTimespec(s: string): bigint {
  const m = /\((-?\d+),\s*(-?\d+)\)/.exec(s);
  if (!m) throw new TsnapError('kernel', `unexpected timerfd time "${s}" in fdinfo`);
  return BigInt(m[1]) * 1_000_000_000n + BigInt(m[2]);
}

export function describeTimerfd(info: FdInfo): TimerfdImage {
  return {
    clockid: Number(field(info, 'clockid', info.fd)),
    ticks: BigInt(field(info, 'ticks', info.fd)),
    valueNs: parseTimespec(field(info, 'it_value', info.fd)),
    intervalNs: parseTimespec(field(info, 'it_interval', info.fd)),
  };
}

export function describeSignalfd(info: FdInfo): FdImage['signalfd'] {
  return { mask: BigInt(`0x${field(info, 'sigmask', info.fd).trim()}`) };
}

/**
 * The struct itimerspec that re-arms a timer (timerfd or POSIX) with the
 * time it had left and its period, or null for a disarmed one. An expired
 * periodic timer shows 0 left (it re-arms when read or delivered): it gets
 * one period.
 */
export function timerSetting(t: { valueNs: bigint; intervalNs: bigint }): Buffer | null {
  const value = t.valueNs === 0n ? t.intervalNs : t.valueNs;
  if (value <= 0n) return null;
  const its = Buffer.alloc(32);
  its.writeBigInt64LE(t.intervalNs / 1_000_000_000n, 0);
  its.writeBigInt64LE(t.intervalNs % 1_000_000_000n, 8);
  its.writeBigInt64LE(value / 1_000_000_000n, 16);
  its.writeBigInt64LE(value % 1_000_000_000n, 24);
  return its;
}

/** The O_NONBLOCK/O_CLOEXEC creation flags these syscalls take (same values as O_*). */
function createFlags(f: FdImage): number {
  return (f.flags & O_NONBLOCK) | O_CLOEXEC;
}

export function restoreEventfd(rt: RemoteTask, group: FdImage[], floor: number): void {
  const f = group[0];
  const e = f.eventfd!;
  const tmp = Number(rt.sc.check('eventfd2', SYS.eventfd2, 0, createFlags(f) | (e.semaphore ? EFD_SEMAPHORE : 0)));
  if (e.count > 0n) {
    // The initial value is only 32 bits wide: the count goes in with a write.
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(e.count);
    rt.sc.check('write(eventfd)', SYS.write, tmp, rt.put(b), 8);
  }
  placeFds(rt, [{ tmp, targets: group }], floor);
}

export function restoreTimerfd(rt: RemoteTask, group: FdImage[], floor: number): void {
  const f = group[0];
  const t = f.timerfd!;
  const tmp = Number(rt.sc.check('timerfd_create', SYS.timerfd_create, t.clockid, createFlags(f)));
  const its = timerSetting(t);
  if (its) rt.sc.check('timerfd_settime', SYS.timerfd_settime, tmp, 0, rt.put(its), 0);
  if (t.ticks > 0n) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(t.ticks);
    rt.sc.check('ioctl(TFD_IOC_SET_TICKS)', SYS.ioctl, tmp, TFD_IOC_SET_TICKS, rt.put(b));
  }
  placeFds(rt, [{ tmp, targets: group }], floor);
}

export function restoreSignalfd(rt: RemoteTask, group: FdImage[], floor: number): void {
  const f = group[0];
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(f.signalfd!.mask);
  const tmp = Number(rt.sc.check('signalfd4', SYS.signalfd4, -1, rt.put(b), 8, createFlags(f)));
  placeFds(rt, [{ tmp, targets: group }], floor);
}

export const eventfdKind: FdKindModule = {
  describe: (c, img) => { img.eventfd = describeEventfd(c.info); },
  restorable: (f) => !!f.eventfd,
  restore: (c, group) => restoreEventfd(c.rt, group, c.floor),
};

export const timerfdKind: FdKindModule = {
  describe: (c, img) => { img.timerfd = describeTimerfd(c.info); },
  restorable: (f) => !!f.timerfd,
  restore: (c, group) => restoreTimerfd(c.rt, group, c.floor),
};

export const signalfdKind: FdKindModule = {
  describe: (c, img) => { img.signalfd = describeSignalfd(c.info); },
  restorable: (f) => !!f.signalfd,
  restore: (c, group) => restoreSignalfd(c.rt, group, c.floor),
};

/**
 * Counting tracepoint events of one thread with perf_event_open (no
 * sampling, no ring buffer: a counter read with read()). Used to learn
 * whether a thread made a given kind of syscall in a window of time
 * (proc/vmflags-watch.ts).
 */
import { closeSync, readSync } from 'node:fs';
import { libc } from './libc.js';
import { SysError } from './errors.js';

const SYS_perf_event_open = 298;
const PERF_TYPE_TRACEPOINT = 2;
const PERF_ATTR_SIZE = 128;
const PERF_FLAG_FD_CLOEXEC = 8;
/** _IOW('$', 6, char *) */
const PERF_EVENT_IOC_SET_FILTER = 0x40082406;

/**
 * A counter of tracepoint `id` (from tracefs events/.../id) in thread
 * `tid`, counting from now, only events the ftrace `filter` keeps (e.g.
 * "behavior == 14"). Throws SysError.
 */
export function openTracepointCounter(id: number, tid: number, filter: string | null): number {
  const attr = Buffer.alloc(PERF_ATTR_SIZE);
  attr.writeUInt32LE(PERF_TYPE_TRACEPOINT, 0);
  attr.writeUInt32LE(PERF_ATTR_SIZE, 4);
  attr.writeBigUInt64LE(BigInt(id), 8);
  const fd = Number(libc.syscall(SYS_perf_event_open, libc.address(attr), tid, -1, -1, PERF_FLAG_FD_CLOEXEC, 0));
  if (fd < 0) throw new SysError(`perf_event_open(tracepoint ${id}, ${tid})`, libc.errno());
  if (filter !== null && libc.ioctl(fd, PERF_EVENT_IOC_SET_FILTER, Buffer.from(`${filter}\0`)) === -1) {
    const e = libc.errno();
    closeSync(fd);
    throw new SysError(`ioctl(PERF_EVENT_IOC_SET_FILTER "${filter}")`, e);
  }
  return fd;
}

export function readCounter(fd: number): number {
  const b = Buffer.alloc(8);
  readSync(fd, b, 0, 8, null);
  return Number(b.readBigUInt64LE(0));
}

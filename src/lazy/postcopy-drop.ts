/**
 * Post-copy's drop of the stale set on the receiver, as few syscalls as
 * the kernel allows. A madvise(MADV_DONTNEED) per range pays, per range,
 * a syscall, the mmap lock and a TLB flush in the task; the set is
 * thousands of small ranges at 100 MB/s (3 000-5 000 in bench/postcopy.ts
 * runs), and that step was most of the receiver's part of the downtime
 * (200-600 ms at load 9-14, TSNAP_TRACE=1). process_madvise() with the
 * task's own PIDFD_SELF takes up to 1 024 ranges per call (UIO_MAXIOV)
 * under one lock (C probe here, 3 000 two-page ranges: 0.3-0.5x the
 * madvise loop's time). Its iovecs go at the end of the stub's batch
 * area, the calls at its start; each call must report every byte of its
 * ranges advised, or the restore fails as for any failed call of the list.
 *
 * Without the stub's batch area, or on a kernel without PIDFD_SELF or
 * unrestricted self-advice (before 6.15), one madvise per range as before.
 * TSNAP_PC_PROCESS_MADVISE=0 forces that too (bench's baseline).
 */
import { SYS, PIDFD_SELF_THREAD_GROUP, processMadviseSelfDontneed } from '../sys/index.js';
import { RemoteBatch, BATCH_RECORD } from '../inject/remote-batch.js';
import { TsnapError } from '../errors.js';
import type { RemoteTask } from '../inject/remote-task.js';
import type { Range } from '../image/ranges.js';

const MADV_DONTNEED = 4;
/** The kernel's UIO_MAXIOV: ranges per process_madvise call. */
const PER_CALL = 1024;
const IOVEC = 16;
/** Records that may follow the drops in the same list (the userfaultfd()). */
const SPARE_RECORDS = 8;

/** The drop of `drop` as a list; `LazyRestore.open` appends its userfaultfd() and runs it. */
export function dropList(rt: RemoteTask, drop: readonly Range[]): RemoteBatch {
  const batch = new RemoteBatch(rt);
  const area = rt.batchArea;
  const calls = Math.ceil(drop.length / PER_CALL);
  const iovBytes = drop.length * IOVEC;
  const fits = area !== null && (calls + SPARE_RECORDS) * BATCH_RECORD <= area.size - iovBytes;
  if (drop.length === 0 || !fits || process.env.TSNAP_PC_PROCESS_MADVISE === '0' || rt.sc.task.tracer !== 'direct' || !processMadviseSelfDontneed()) {
    for (const r of drop) batch.push(`madvise(0x${r.start.toString(16)}, post-copy)`, SYS.madvise, [r.start, r.end - r.start, MADV_DONTNEED]);
    return batch;
  }
  const at = area.area + area.size - iovBytes;
  const iov = Buffer.alloc(iovBytes);
  for (let i = 0; i < drop.length; i++) {
    iov.writeBigUInt64LE(BigInt(drop[i].start), i * IOVEC);
    iov.writeBigUInt64LE(BigInt(drop[i].end - drop[i].start), i * IOVEC + 8);
  }
  rt.mem.write(iov, 0, iov.length, at);
  for (let c = 0; c < calls; c++) {
    const first = c * PER_CALL;
    const part = drop.slice(first, first + PER_CALL);
    const bytes = part.reduce((n, r) => n + (r.end - r.start), 0);
    const name = `process_madvise(${part.length} ranges from 0x${part[0].start.toString(16)}, post-copy)`;
    batch.push(name, SYS.process_madvise, [PIDFD_SELF_THREAD_GROUP, at + first * IOVEC, part.length, MADV_DONTNEED, 0], {
      value: BigInt(bytes),
      mismatch: (got) => new TsnapError('restoreFailed', `${name} dropped ${got} of ${bytes} bytes in process ${rt.pid}; the stale pages cannot be left in place`),
    });
  }
  return batch;
}

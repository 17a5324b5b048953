/**
 * Pipes inside a frozen target, for the one-copy dump (splice-copy.ts): the
 * target vmsplices its own pages into them (vmsplice maps the caller's
 * memory, so it must run in the target), and tsnap splices them from its
 * copy of each read end into the pages file. The page data is copied once,
 * from the target's pages into the page cache, as CRIU's parasite does.
 *
 * What this leaves in the target until close(): a scratch mapping (the
 * syscall loop, its table and the iovec lists) and both ends of each pipe.
 * Each is on the guardian's undo list from the request that made it, so a
 * tsnap SIGKILLed at any instant leaves the target without them. The
 * target stays frozen from open() to close(): the pipes hold references to
 * its pages, not copies, so every byte must be spliced out before it runs.
 */
import { closeSync } from 'node:fs';
import {
  Guardian, GuardianError, SysError, SYS, O_CLOEXEC, O_NONBLOCK, F_SETPIPE_SZ, VmCopier,
  fcntl, pidfdOpen, pidfdGetfd, pipeMaxSize, SPLICE_F_NONBLOCK, type ProcMem, type RemoteRange,
} from '../sys/index.js';
import { RemoteSyscaller, type Scratch } from '../inject/remote-syscall.js';
import { batchArea, batchAreaSize, runBatch, BATCH_PROT, type BatchArea, type BatchCall } from '../inject/syscall-batch.js';
import type { FrozenProcess } from '../freeze/frozen-process.js';
import { faultPoint } from '../fault-points.js';
import { PAGE_SIZE } from '../sys/uapi.js';

const IOVEC = 16;
const IOV_MAX = 1024;
/** Below this a pipe's round trips cost more than the copy they save. */
export const MIN_PIPE_BYTES = 256 << 10;

/** One pipe's share of a fill: the target's ranges, back to back, at most `capacity` bytes. */
export interface PipeJob {
  pipe: number;
  ranges: readonly RemoteRange[];
}

export class TargetPipes {
  /** Remote round trips (one guardian request each) spent on fills. */
  trips = 0;
  private closed = false;

  private constructor(
    private readonly sc: RemoteSyscaller,
    private readonly scratch: Scratch,
    private readonly area: BatchArea,
    private readonly iovAt: number,
    private readonly copier: VmCopier,
    /** Per pipe: the target's fds, their undo tokens, tsnap's read end. */
    private readonly ends: PipeEnds[],
    /** Bytes each pipe holds. */
    readonly capacity: number,
    /** Ranges one pipe's vmsplice takes at most. */
    readonly maxRanges: number,
  ) {}

  get count(): number {
    return this.ends.length;
  }

  /** tsnap's read end of pipe `i`. */
  readEnd(i: number): number {
    return this.ends[i].mine;
  }

  /**
   * `count` pipes of up to `bytes` each in the frozen process, or null with
   * the reason when the machine or the task cannot have them (tsnap then
   * copies the usual way). Everything made before a failure is removed.
   */
  static open(frozen: FrozenProcess, mem: ProcMem, count: number, bytes: number): TargetPipes | string {
    if (frozen.leader.tracer !== 'guarded') return 'the process is not frozen through the guardian';
    const max = pipeMaxSize();
    const want = Math.min(bytes, max);
    if (want < MIN_PIPE_BYTES) return `pipes are too small here (/proc/sys/fs/pipe-max-size is ${max})`;
    const maxRanges = Math.min(IOV_MAX, Math.floor(want / PAGE_SIZE));
    const sc = new RemoteSyscaller(frozen.leader, mem);
    // The loop's table holds a fill (one vmsplice per pipe) or the closing (both ends of each).
    const areaSize = Math.ceil(batchAreaSize(2 * count) / 16) * 16;
    const fdsAt = areaSize;
    const iovAt = areaSize + Math.ceil((8 * count) / 16) * 16;
    const scratch = sc.openScratch(iovAt + count * maxRanges * IOVEC, BATCH_PROT);
    const area = batchArea(frozen.pid, scratch.addr, 2 * count);
    const ends: PipeEnds[] = [];
    let pidfd = -1;
    const undo = () => {
      try { closeAll(sc, area, ends); } catch { /* the task is gone */ }
      try { scratch.close(); } catch { /* the task is gone */ }
    };
    try {
      pidfd = pidfdOpen(frozen.pid);
      frozen.leader.atSyscallStop = true;
      // One request for all: each pipe is on the guardian's undo list before the next is made.
      let made;
      try {
        made = Guardian.get().pipes(frozen.pid, sc.gadget, scratch.addr + fdsAt, O_CLOEXEC | O_NONBLOCK, count);
      } catch (err) {
        if (err instanceof GuardianError && err.exited) return fail(undo, 'the process exited');
        throw err;
      }
      for (const m of made.made) ends.push({ r: m.fds[0], w: m.fds[1], undoR: m.undo[0], undoW: m.undo[1], mine: -1 });
      // Fewer than asked (the target's fd limit, the undo list full): the copy takes more steps.
      if (!ends.length) return fail(undo, made.ret < 0n ? `remote pipe2: ${new SysError('pipe2', Number(-made.ret)).code}` : 'no pipe could be made');
      let capacity = want;
      for (const e of ends) {
        e.mine = pidfdGetfd(pidfd, e.r);
        // Sized from tsnap, not in the target: the target's user may be past
        // its pipe quota (pipe-user-pages-soft), which binds only the unprivileged.
        capacity = Math.min(capacity, fcntl(e.mine, F_SETPIPE_SZ, want));
      }
      faultPoint('splice-pipes');
      if (capacity < MIN_PIPE_BYTES) return fail(undo, `pipes got only ${capacity} bytes`);
      return new TargetPipes(sc, scratch, area, scratch.addr + iovAt, new VmCopier(frozen.pid), ends, capacity, Math.min(maxRanges, capacity / PAGE_SIZE));
    } catch (err) {
      undo();
      if (err instanceof SysError) return `${err.message}`;
      throw err;
    } finally {
      if (pidfd >= 0) closeSync(pidfd);
    }
  }

  /**
   * One remote step: each job's ranges vmspliced into its pipe (never
   * waiting: the pipes are non-blocking). The raw result of each, in order:
   * the bytes now in the pipe, or -errno.
   */
  fill(jobs: readonly PipeJob[]): bigint[] {
    if (jobs.length > this.count) throw new RangeError(`${jobs.length} jobs for ${this.count} pipes`);
    const iov = Buffer.alloc(jobs.length * this.maxRanges * IOVEC);
    const calls: BatchCall[] = [];
    let o = 0;
    jobs.forEach((j) => {
      if (j.ranges.length > this.maxRanges) throw new RangeError(`${j.ranges.length} ranges for one pipe`);
      const at = this.iovAt + j.pipe * this.maxRanges * IOVEC;
      const start = o;
      for (const r of j.ranges) {
        iov.writeBigUInt64LE(BigInt(r.addr), o);
        iov.writeBigUInt64LE(BigInt(r.len), o + 8);
        o += IOVEC;
      }
      if (o > start && this.copier.writev(iov, start, [{ addr: at, len: o - start }]) !== o - start) {
        throw new SysError(`process_vm_writev(${this.sc.task.pid}) of the vmsplice iovecs`, 14);
      }
      calls.push({ name: 'vmsplice', nr: SYS.vmsplice, args: [this.ends[j.pipe].w, at, j.ranges.length, SPLICE_F_NONBLOCK], raw: true });
    });
    this.trips++;
    const rets = runBatch(this.sc, calls, this.area);
    faultPoint('splice-filled');
    return rets;
  }

  /** Removes everything from the target and closes tsnap's ends; once, on every path. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    let first: unknown = null;
    try { closeAll(this.sc, this.area, this.ends); } catch (err) { first ??= err; }
    try { this.scratch.close(); } catch (err) { first ??= err; }
    if (first) throw first;
  }
}

interface PipeEnds { r: number; w: number; undoR: bigint; undoW: bigint; mine: number }

function fail(undo: () => void, why: string): string {
  undo();
  return why;
}

/**
 * Closes tsnap's copies, then every end in the target in one remote step
 * (the syscall loop: one stop), then has the guardian forget their undos,
 * whose ids are one consecutive range (one pipes() request). Should tsnap
 * die between the two, the guardian closes those fd numbers again: the
 * task is frozen and made no fd meanwhile, so that only fails (EBADF).
 */
function closeAll(sc: RemoteSyscaller, area: BatchArea, ends: PipeEnds[]): void {
  for (const e of ends) if (e.mine >= 0) { closeSync(e.mine); e.mine = -1; }
  const open = ends.filter((e) => e.w >= 0 || e.r >= 0);
  if (!open.length) return;
  const calls: BatchCall[] = open.flatMap((e) => [e.w, e.r].filter((fd) => fd >= 0).map((fd) => ({ name: `close(${fd})`, nr: SYS.close, args: [fd], raw: true })));
  const ids = open.flatMap((e) => [e.undoW, e.undoR]);
  const lo = ids.reduce((a, b) => (b < a ? b : a));
  const hi = ids.reduce((a, b) => (b > a ? b : a));
  sc.task.atSyscallStop = true;
  const rets = runBatch(sc, calls, area);
  for (const e of open) { e.w = -1; e.r = -1; }
  faultPoint('splice-closed');
  Guardian.get().dropUndos(sc.task.pid, lo, hi);
  const bad = rets.findIndex((r) => r < 0n);
  if (bad >= 0) throw new SysError(`remote ${calls[bad].name} in ${sc.task.pid}`, Number(-rets[bad]));
}

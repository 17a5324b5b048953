/**
 * `tsnap restore --lazy`: the restore's side of lazy memory.
 *
 * Which memory is lazy: private anonymous VMAs whose pages the image holds
 * (heap, thread stacks, anonymous mmaps), the bulk of any process.
 * userfaultfd MISSING mode only takes anonymous, shmem and hugetlb VMAs: a
 * private file mapping (a library's data, a MAP_PRIVATE file) is refused
 * with EINVAL (checked on this kernel; vma_can_userfault()), so its dumped
 * pages are written at restore as before. Shared memory (MAP_SHARED
 * anonymous, memfd, SysV shm) is written at restore too: several processes
 * may map it, and a page filled through one uffd would still have to reach
 * the others. Locked VMAs (mlock faults every page in while tsnap still
 * drives the task), VMAs with guard regions and the main stack (argv and
 * the environment: /proc/PID/cmdline reads them through the kernel's remote
 * access, which cannot wait for a userfault and fails with EIO) as well.
 *
 * When: the ranges are registered after the last remote syscall that could
 * touch them, right before the stub goes and the process starts, and the
 * pager then runs on tsnap's main thread. While tsnap drives the task that
 * thread is blocked in waitpid(): a fault there could never be answered.
 * So the few pages the kernel itself writes during the restore (each
 * thread's rseq area, written on every return to user mode once
 * registered) are written at restore, and after the registration a
 * PAGEMAP_SCAN looks for any other present page of the lazy ranges (touched
 * by the restore before registration: zero-filled by the kernel) and writes
 * its image data over it, so that no page ever reads what the image did not
 * hold.
 *
 * How: the uffd is created inside the new task (a uffd binds the mm of its
 * creator) by an injected userfaultfd() before its credentials are restored
 * (open()), taken with pidfd_getfd and closed in the task again; at the end
 * UFFDIO_API and UFFDIO_REGISTER from tsnap act on the task's mm (attach()).
 *
 * --detach: tsnap exits, so the pager moves to a background process
 * (pager-main.ts, started once the process runs so that Node's start-up is
 * not on the critical path): tsnap serves faults meanwhile, stops between
 * two steps, hands over what is still pending per address space and every
 * uffd (pidfd_getfd), and exits once the pager took them.
 *
 * A guard (tsnap-lazyguard.c) holds copies of the uffds and kills the
 * processes should the pager die before the fill ends: without it the
 * kernel would unregister the ranges with the pager's last uffd, and the
 * pages not in yet would read as zeros.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, readlinkSync, readSync, writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { SYS, O_CLOEXEC, O_NONBLOCK, SIGKILL, pidfdOpen, pidfdGetfd, uffdApiMissing, uffdRegisterMissing, UFFD_FEATURE, SysError, Pagemap, PAGE_IS, pollWait, kill } from '../sys/index.js';
import { takeGuard, refillSpareGuard, reapGuardLater } from './guard-spawn.js';
import type { RemoteTask } from '../inject/remote-task.js';
import type { RemoteBatch } from '../inject/remote-batch.js';
import type { Image } from '../image/image-reader.js';
import type { VmaImage, ThreadImage } from '../../formats/schema.js';
import { isSpecial, vmaKind, lockFor, mapCallFor } from '../restore/layout-plan.js';
import { isAioRing } from '../files/aio.js';
import { TsnapError } from '../errors.js';
import { PagerHost, type HostEnd, type SourceSpec } from './pager-host.js';
import { subtract, normalize, intersect, type Range } from '../image/ranges.js';
import type { PageSource } from './page-source.js';
import { PAGE_SIZE } from '../sys/uapi.js';
import { mark } from '../trace.js';
import { WindowPriority } from '../migrate/window-priority.js';

const MAP_DROPPABLE = 0x08;
const FEATURES = UFFD_FEATURE.EVENT_FORK | UFFD_FEATURE.EVENT_REMAP | UFFD_FEATURE.EVENT_REMOVE | UFFD_FEATURE.EVENT_UNMAP;

export interface LazyOptions {
  /** The pager must outlive tsnap (restore --detach): it moves to a background process (handover()). */
  detach: boolean;
  /** Where the pager and the guard report (default: tsnap's stderr). */
  log?: string;
  /**
   * migrate --postcopy: the pages come from the migration's source host,
   * for `set` only; every other page is in place already (a live build).
   */
  remote?: { source: PageSource; set: Range[] };
}

/** Whether a dumped VMA's pages can come in lazily (see the top of this file). */
export function isLazyVma(v: VmaImage): boolean {
  // The stack holds argv and the environment, which /proc/PID/cmdline and
  // environ read through the kernel's remote access, and that cannot wait
  // for a userfault (it fails with EIO): filled at restore.
  if (!v.dumped || isSpecial(v) || v.special === 'stack' || isAioRing(v) || vmaKind(v) !== 'anon') return false;
  if (lockFor(v) !== null || (v.guards?.length ?? 0) > 0) return false;
  return (mapCallFor(v).flags & MAP_DROPPABLE) === 0;
}

export interface LazyStats {
  /** Bytes left to the pager at the start. */
  lazyBytes: number;
  /** Pages the restore found present in lazy ranges and wrote from the image (should be 0). */
  repairedPages: number;
}

const noUffd = (errno: number | bigint) => new TsnapError('kernel', `userfaultfd() in the restored process failed (errno ${errno}); restore --lazy needs CONFIG_USERFAULTFD and CAP_SYS_PTRACE`);

const fillDelay = (): number => Number(process.env.TSNAP_LAZY_FILL_DELAY_MS ?? 0) || 0;
const P = PAGE_SIZE;

/** Pages of lazy VMAs the kernel writes while tsnap still drives the task: written at restore. */
export function kernelTouched(threads: readonly ThreadImage[], lazy: readonly VmaImage[]): Range[] {
  const out: Range[] = [];
  for (const t of threads) {
    if (!t.rseq) continue;
    const a = Number(t.rseq.pointer);
    const s = a - (a % P);
    const e = Math.ceil((a + Math.max(t.rseq.size, 32)) / P) * P;
    if (lazy.some((v) => v.start < e && s < v.end)) out.push({ start: s, end: e });
  }
  return normalize(out);
}

export class LazyRestore {
  private readonly host: PagerHost;
  /** The guard's pid, once its spawn returned (guard-spawn.ts: it starts on the pool). */
  private guardPid = 0;
  private readonly guardStarted: Promise<number>;
  /** Read end of the guard's stdout, where it says "armed". */
  private readonly guardAck: number;
  /** Write end of the guard's stdin: the pager holds it; its end (EOF) without "D" is the pager's death. */
  private readonly guardW: number;
  private background: ChildProcess | null = null;
  private readonly logFd: number;
  private readonly pidfds: number[] = [];
  private readonly uffds: number[] = [];
  private readonly uffdOf = new Map<number, number>();
  private running: Promise<HostEnd> | null = null;
  /**
   * lazyBytes is known once the pager's sources are built (build()): after
   * the start for a local restore, or at once when asked.
   */
  readonly stats: LazyStats;
  private lazyBytes = 0;
  /**
   * A local restore's pager sources and contexts, built only once the
   * processes run (start()) or when something needs them first (a repair's
   * data, the stats, a handover): resolving the chain over the lazy VMAs
   * and cutting the pending pieces (1 GiB: 2 000 runs) is work no fault can
   * need before the start, 0.5-1.5 ms of the time to running here.
   */
  private unbuilt: (() => void)[] = [];
  private finished = false;
  /** How the fill ended, once finish() returned. */
  end: HostEnd | null = null;

  constructor(private readonly opts: LazyOptions) {
    const g = takeGuard(opts.log);
    this.guardStarted = g.pid;
    g.pid.then((pid) => { this.guardPid = pid; }, () => { /* arm() says so */ });
    this.guardW = g.w;
    this.guardAck = g.ack;
    this.logFd = g.logFd;
    const logFd = this.logFd;
    this.host = new PagerHost(this.guardW, (m) => { try { writeSync(logFd, `${m}\n`); } catch { /* no log */ } }, fillDelay(), opts.remote ? faultWaitClass() : undefined);
    const self = this;
    this.stats = { get lazyBytes() { self.build(); return self.lazyBytes; }, repairedPages: 0 };
  }

  /** The guard's pid, once its spawn returned (rejects when it could not start: arm() says so). */
  get guardProcess(): Promise<number> {
    return this.guardStarted;
  }

  /** Builds what attach() left for later (see `unbuilt`). */
  private build(): void {
    for (const f of this.unbuilt.splice(0)) f();
  }

  /**
   * Creates the task's uffd, while the task is still root: without
   * CAP_SYS_PTRACE (vm.unprivileged_userfaultfd=0) only a user-mode-only
   * uffd could be had, and a read() into a lazy buffer would then fail
   * with EFAULT instead of waiting for its page. Registered by attach().
   * Called while remote syscalls still stop once (before restore blocks
   * the signals): two stops, not four. `batch`: calls to run first, the
   * userfaultfd() appended as their last (post-copy's drops): one stop fewer.
   * `closeLater`: takes the task's fd to close with later calls, one stop fewer again.
   */
  open(rt: RemoteTask, vmas: readonly VmaImage[], batch?: RemoteBatch, closeLater?: (taskFd: number) => void): void {
    if (vmas.length === 0) {
      batch?.flush();
      return;
    }
    let made: bigint;
    if (batch) {
      batch.push('userfaultfd', SYS.userfaultfd, [O_CLOEXEC | O_NONBLOCK]);
      try {
        batch.flush();
      } catch (err) {
        if (err instanceof SysError && err.call === 'userfaultfd') throw noUffd(err.errno);
        throw err;
      }
      made = batch.lastResult;
    } else {
      made = rt.sc.call(SYS.userfaultfd, O_CLOEXEC | O_NONBLOCK);
      if (made < 0n) throw noUffd(Number(-made));
    }
    const taskFd = Number(made);
    let uffd = -1;
    const pidfd = pidfdOpen(rt.pid);
    this.pidfds.push(pidfd);
    try {
      uffd = pidfdGetfd(pidfd, taskFd);
    } catch (err) {
      rt.sc.check('close(uffd)', SYS.close, taskFd);
      throw err;
    }
    // `closeLater`: the task's copy is closed in the caller's next list of remote calls (a stop fewer).
    if (closeLater) closeLater(taskFd);
    else rt.sc.check('close(uffd)', SYS.close, taskFd);
    this.uffds.push(uffd);
    this.uffdOf.set(rt.pid, uffd);
  }

  /**
   * Makes `vmas` of the new task lazy: registers them on the uffd open()
   * made and gives them to the pager. The last step before the stub goes:
   * from here on a fault in these ranges waits for the pager, which runs
   * once the process does. `written`: what the restore wrote in them already.
   */
  async attach(rt: RemoteTask, chain: readonly Image[], vmas: readonly VmaImage[], written: readonly Range[]): Promise<void> {
    if (vmas.length === 0) return;
    const uffd = this.uffdOf.get(rt.pid)!;
    const granted = uffdApiMissing(uffd, FEATURES);
    if ((granted & BigInt(FEATURES)) !== BigInt(FEATURES)) throw new TsnapError('kernel', 'this kernel\'s userfaultfd lacks the fork/remap/remove/unmap events restore --lazy needs');
    for (const v of vmas) {
      try {
        uffdRegisterMissing(uffd, v.start, v.end - v.start);
      } catch (err) {
        if (err instanceof SysError) throw new TsnapError('kernel', `cannot make the memory at 0x${v.start.toString(16)} lazy (${err.code}); restore without --lazy`);
        throw err;
      }
    }
    mark('lazy: registered');
    const within = vmas.map((v) => ({ start: v.start, end: v.end }));
    const remote = this.opts.remote;
    let index = -1;
    const add = () => {
      index = remote ? this.host.addRemoteSource(remote.source, within) : this.host.addSource({
        levels: chain.map((c) => ({ dir: c.dir, kind: c.inventory.kind, runs: c.pagemap.runs, chunks: c.pagemap.chunks })),
        within,
      } satisfies SourceSpec);
      this.host.addContext({ fd: uffd, name: `process ${rt.pid}`, source: index, skip: written });
      this.lazyBytes += this.host.pager.contexts[this.host.pager.contexts.length - 1].pending.bytes;
    };
    // Post-copy: the rest of these VMAs holds the right pages already, and
    // the set was dropped just now with nothing run in the task since: no
    // page of it but `written` can be present.
    if (remote) {
      add();
      return;
    }
    this.unbuilt.push(add);
    // TSNAP_LAZY_SOURCE_EARLY=1: built here, as before (bench's baseline in the same run).
    if (process.env.TSNAP_LAZY_SOURCE_EARLY === '1') this.build();
    await this.repair(rt, within, written, (start, len) => {
      this.build();
      return this.host.fetch(index, start, len);
    });
    mark('lazy: repaired');
  }

  /**
   * Present pages of the lazy ranges (of `only` in them, for post-copy) the
   * restore did not write: the image's data over them. One scan per VMA,
   * not per range of `only`: a post-copy set has up to thousands of ranges,
   * and each scan is an ioctl.
   */
  private async repair(rt: RemoteTask, within: Range[], written: readonly Range[], fetch: (start: number, len: number) => Promise<Buffer | null>, only?: readonly Range[]): Promise<void> {
    const pm = new Pagemap(rt.pid);
    const present: Range[] = [];
    try {
      for (const r of within) {
        for (const batch of pm.scan({ start: r.start, end: r.end, categoryAnyof: PAGE_IS.PRESENT | PAGE_IS.SWAPPED, returnMask: PAGE_IS.PRESENT | PAGE_IS.SWAPPED })) {
          for (const g of batch) present.push({ start: g.start, end: g.end });
        }
      }
    } finally {
      pm.close();
    }
    const stale = only ? intersect(normalize(present), normalize([...only])) : normalize(present);
    for (const r of subtract(stale, normalize([...written]))) {
      const data = await fetch(r.start, r.end - r.start);
      const b = data ?? Buffer.alloc(r.end - r.start);
      rt.mem.write(b, 0, b.length, r.start);
      this.stats.repairedPages += (r.end - r.start) / P;
    }
  }

  /**
   * Hands the guard its copies as soon as every uffd exists (after the last
   * open()): it takes them while the restore goes on, and arm() only reads
   * its answer. Until then a failed restore kills the guard (abort()).
   */
  sendArm(): void {
    if (this.pidfds.length === 0 || this.armSent) return;
    this.armSent = true;
    writeAll(this.guardW, `arm ${process.pid} ${this.pidfds.join(' ')} - ${this.uffds.join(' ')}\n`);
  }

  private armSent = false;

  /** Before the processes run: the guard holds its copies (the pager may die from now on). */
  async arm(): Promise<void> {
    if (this.pidfds.length === 0) return;
    this.sendArm();
    await this.guardStarted;
    // On this thread: the guard answers within a few hundred µs of being
    // scheduled; a pool thread's poll and the event loop's turn added 1-30 ms here.
    const [ready] = pollWait([this.guardAck], 5000);
    const b = Buffer.alloc(6);
    const n = ready ? readSync(this.guardAck, b, 0, 6, null) : 0;
    if (b.subarray(0, n).toString() !== 'armed\n') throw new TsnapError('restoreFailed', 'the lazy restore guard did not start; nothing was started');
  }

  /** The processes run: serve their faults and fill the rest. */
  start(): void {
    // From the next turn of the event loop: restore() returns with the
    // processes running first (the pager's first step, reading its uffds
    // and starting a chunk's read, cost 1-4 ms here); faults wait meanwhile.
    this.running = new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
      try {
        this.build();
      } catch (err) {
        // Nothing can answer the faults: the guard kills the processes.
        return this.host.fail(`the pager could not be set up (${(err as Error).message})`);
      }
      return this.host.run();
    });
    // Once the fill is over, whatever its end (guard-spawn.ts says why not before).
    this.running.then(refillSpareGuard, refillSpareGuard);
  }

  /**
   * restore --detach: moves the pager to the background process. If that
   * process is not there, tsnap goes on and exits only once every page is in.
   */
  async handover(): Promise<string> {
    if (this.host.pager.contexts.length === 0 && this.unbuilt.length === 0) return this.finish();
    // Started only now, with the process running: Node's start-up (a few
    // hundred ms on a busy machine) is off the critical path, and tsnap
    // serves the faults meanwhile.
    const bg = spawn(process.execPath, [fileURLToPath(new URL('./pager-main.js', import.meta.url))], { stdio: ['pipe', 'pipe', this.logFd], detached: true });
    this.background = bg;
    bg.on('error', () => { /* the handover falls back to tsnap */ });
    bg.stdin!.on('error', () => { /* it died: the handover says so */ });
    const lines = createInterface({ input: bg.stdout! })[Symbol.asyncIterator]();
    const running = this.running!;
    const booted = await Promise.race([lines.next(), running.then(() => null)]);
    if (booted === null) return this.finish();
    if (booted.done || booted.value !== 'booted') return `the background pager did not start: ${await this.finish()}`;
    this.host.pager.stop();
    const end = await running;
    if (end.how !== 'stopped') return this.finish();
    const state = this.host.exportState();
    bg.stdin!.write(JSON.stringify({ tsnapPid: process.pid, guardFd: this.guardW, fillDelayMs: fillDelay(), state }) + '\n');
    const ok = await lines.next();
    if (ok.done || ok.value !== 'ok') {
      this.host.pager.resume();
      this.running = this.host.run();
      return `the background pager did not take over (${ok.value ?? 'it ended'}): ${await this.finish()}`;
    }
    bg.unref();
    bg.stdin!.end();
    (bg.stdout as unknown as { unref?: () => void }).unref?.();
    this.closeOwn(state.contexts.map((c) => c.fd));
    return `pager process ${bg.pid} (guard ${this.guardPid}) fills the rest of the memory`;
  }

  /** restore without --detach: tsnap fills everything; its copies go when it is done. */
  async finish(): Promise<string> {
    const end = await (this.running ?? Promise.resolve({ how: 'done', stats: this.host.pager.stats } as HostEnd));
    this.end = end;
    this.background?.kill('SIGKILL');
    this.closeOwn([]);
    if (end.how === 'failed') return `the lazy fill failed: ${end.message}`;
    return `lazy fill done by tsnap (guard ${this.guardPid}): ${end.stats.faults} faults, ${end.stats.bytesFaulted + end.stats.bytesFilled} bytes`;
  }

  /** The restore failed: nothing of the lazy machinery may stay. */
  abort(): void {
    this.background?.kill('SIGKILL');
    // Killed before closeOwn() reaps it (also when its spawn is still under way).
    this.guardStarted.then((pid) => { try { kill(pid, SIGKILL); } catch { /* gone */ } }, () => { /* never started */ });
    this.closeOwn(this.uffds);
  }

  /** Closes tsnap's copies (`fds`: uffds, only while they still are uffds: the pager closes its own). */
  private closeOwn(fds: number[]): void {
    if (this.finished) return;
    this.finished = true;
    for (const fd of new Set(fds)) {
      try {
        if (readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[userfaultfd]') closeSync(fd);
      } catch { /* closed */ }
    }
    for (const fd of [...this.pidfds, this.guardW, this.guardAck]) { try { closeSync(fd); } catch { /* closed */ } }
    this.guardStarted.then((pid) => reapGuardLater(pid), () => { /* never started */ });
    // The spawn hands the guard this fd: closed once it returned.
    const logFd = this.logFd;
    const closeLog = () => { try { closeSync(logFd); } catch { /* closed */ } };
    if (logFd !== 2) this.guardStarted.then(closeLog, closeLog);
  }
}

/**
 * restore()'s stats with lazyBytes (restore --lazy) read when asked: it is
 * known once the pager's sources are built, after the start.
 */
export function withLazyBytes<T extends object>(stats: T, lazy: LazyRestore | null): T & { lazyBytes?: number } {
  if (!lazy) return stats;
  return Object.defineProperty(stats, 'lazyBytes', { get: () => lazy.stats.lazyBytes, enumerable: true });
}

function writeAll(fd: number, s: string): void {
  const b = Buffer.from(s);
  let at = 0;
  while (at < b.length) at += writeSync(fd, b, at, b.length - at);
}

/**
 * Post-copy: while a thread of the process waits for a page from the link,
 * tsnap's main thread (which reads the answer off the socket and copies it
 * in) runs in the real-time class, as in the downtime's window, and only
 * then: a fault's wait is downtime for that thread. Bounded by the
 * watchdog like every window (sys/rt-watch.ts). TSNAP_PC_FAULT_RT=0 leaves
 * the class alone.
 */
function faultWaitClass(): ((waiting: boolean) => void) | undefined {
  if (process.env.TSNAP_PC_FAULT_RT === '0') return undefined;
  const prio = new WindowPriority();
  return (waiting) => {
    if (!waiting) { prio.restore(); return; }
    prio.raise([process.pid]);
    mark(`lazy: a fault waits on the source, tsnap's thread ${prio.has(process.pid) ? 'raised' : 'as it was'}`);
  };
}

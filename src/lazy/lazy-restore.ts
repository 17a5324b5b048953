/**
 * `tsnap restore --lazy`: the restore's side of lazy memory.
 *
 * Which memory is lazy: private anonymous VMAs whose pages the image holds
 * (heap, stacks, anonymous mmaps), the bulk of any process. userfaultfd
 * MISSING mode only takes anonymous, shmem and hugetlb VMAs: a private file
 * mapping (a library's data, a MAP_PRIVATE file) is refused with EINVAL
 * (checked here; the kernel's vma_can_userfault()), so its dumped pages are
 * written at restore as before. Shared memory (MAP_SHARED anonymous, memfd,
 * SysV shm) is filled at restore too: several processes may map it, and a
 * page filled through one uffd would still have to reach the others. Locked
 * VMAs (mlock would fault every page in while tsnap still drives the task)
 * and VMAs with guard regions are filled at restore as well.
 *
 * How: the uffd is created inside the new task (a uffd binds the mm of its
 * creator) by an injected userfaultfd(), taken with pidfd_getfd and closed in
 * the task again; UFFDIO_API and UFFDIO_REGISTER from tsnap act on the
 * task's mm. A pager (pager.ts) in a worker thread of tsnap serves faults
 * from the moment the ranges are registered, so the restore's own remaining
 * steps (an rseq area the kernel writes, a thread's tid) can fault there
 * too; the background fill waits until the process runs. A worker, not
 * tsnap's main thread: that thread is blocked in waitpid() during every
 * injected syscall, and a syscall that faults on lazy memory would wait for
 * it forever.
 *
 * --detach: tsnap exits, so the pager moves to a background process
 * (pager-main.ts, started at the beginning of the restore so that Node's
 * start-up is not on the critical path): the worker stops between two
 * steps, its state (what is still pending, per address space) and every
 * uffd go over (pidfd_getfd), and tsnap exits once the pager took them.
 *
 * A guard (tsnap-lazyguard.c) holds copies of the uffds and kills the
 * processes should the pager die before the fill ends: without it the
 * kernel would unregister the ranges with the pager's last uffd, and the
 * pages not in yet would read as zeros.
 */
import { Worker } from 'node:worker_threads';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readlinkSync, writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { SYS, O_CLOEXEC, O_NONBLOCK, pidfdOpen, pidfdGetfd, pipe2, uffdApiMissing, uffdRegisterMissing, UFFD_FEATURE_MISSING, SysError } from '../sys/index.js';
import type { RemoteTask } from '../restore/remote-task.js';
import type { Image } from '../image/image-reader.js';
import type { VmaImage } from '../../formats/schema.js';
import { isSpecial, vmaKind, lockFor, mapCallFor } from '../restore/layout-plan.js';
import { isAioRing } from '../files/aio.js';
import { TsnapError } from '../errors.js';
import type { HostEnd, HostState, SourceSpec } from './pager-host.js';

const MAP_DROPPABLE = 0x08;
const FEATURES = UFFD_FEATURE_MISSING.EVENT_FORK | UFFD_FEATURE_MISSING.EVENT_REMAP | UFFD_FEATURE_MISSING.EVENT_REMOVE | UFFD_FEATURE_MISSING.EVENT_UNMAP;

export interface LazyOptions {
  /** The pager must outlive tsnap (restore --detach): it moves to a background process. */
  detach: boolean;
  /** Where the pager and the guard report (default: tsnap's stderr). */
  log?: string;
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
  /** µs waiting for the pager worker to be up at the first registration. */
  workerWaitUs: number;
}

const fillDelay = (): number => Number(process.env.TSNAP_LAZY_FILL_DELAY_MS ?? 0) || 0;

export class LazyRestore {
  private readonly worker: Worker;
  private readonly workerUp: Promise<void>;
  private readonly guard: ChildProcess;
  private readonly guardLines: AsyncIterator<string>;
  /** Write end of the guard's stdin: the pager holds it; its end (EOF) without "D" is the pager's death. */
  private readonly guardW: number;
  private readonly background: ChildProcess | null = null;
  private readonly backgroundLines: AsyncIterator<string> | null = null;
  private readonly logFd: number;
  private readonly pidfds: number[] = [];
  private readonly uffds: number[] = [];
  private readonly waiters = new Map<string, ((m: Record<string, unknown>) => void)[]>();
  /** The worker's pager ended (done, stopped or failed). */
  readonly ended: Promise<HostEnd>;
  readonly stats: LazyStats = { lazyBytes: 0, workerWaitUs: 0 };
  private finished = false;

  constructor(opts: LazyOptions) {
    this.logFd = opts.log ? openSync(opts.log, 'a', 0o600) : 2;
    const [r, w] = pipe2(O_CLOEXEC);
    this.guardW = w;
    try {
      this.guard = spawn(fileURLToPath(new URL('../../native/tsnap-lazyguard', import.meta.url)), [], { stdio: [r, 'pipe', this.logFd], detached: true });
    } finally {
      closeSync(r);
    }
    this.guard.on('error', () => { /* reported when arming */ });
    this.guardLines = createInterface({ input: this.guard.stdout! })[Symbol.asyncIterator]();
    if (opts.detach) {
      this.background = spawn(process.execPath, [fileURLToPath(new URL('./pager-main.js', import.meta.url))], { stdio: ['pipe', 'pipe', this.logFd], detached: true });
      this.background.on('error', () => { /* the handover falls back to the worker */ });
      this.backgroundLines = createInterface({ input: this.background.stdout! })[Symbol.asyncIterator]();
    }
    this.worker = new Worker(new URL('./pager-worker.js', import.meta.url), { workerData: { guardFd: w, logFd: this.logFd, fillDelayMs: fillDelay() } });
    this.worker.on('message', (m: Record<string, unknown>) => {
      const list = this.waiters.get(m.op as string);
      const f = list?.shift();
      if (f) f(m);
    });
    this.workerUp = this.next('ready').then(() => undefined);
    this.ended = new Promise<HostEnd>((resolve) => {
      this.worker.on('error', (err) => resolve({ how: 'failed', message: `the pager thread failed: ${err.message}`, stats: { faults: 0, zeroFaults: 0, bytesFaulted: 0, bytesFilled: 0, forks: 0 } }));
      this.worker.on('exit', () => resolve({ how: 'failed', message: 'the pager thread ended', stats: { faults: 0, zeroFaults: 0, bytesFaulted: 0, bytesFilled: 0, forks: 0 } }));
      this.watchEnd(resolve);
    });
    this.workerUp.catch(() => {});
  }

  private watchEnd(resolve: (e: HostEnd) => void): void {
    this.next('ended').then((m) => {
      const end = m.end as HostEnd;
      if (end.how === 'stopped') { this.stoppedState = m.state as HostState; this.stoppedWaiter?.(); this.watchEnd(resolve); return; }
      resolve(end);
    });
  }

  private stoppedState: HostState | null = null;
  private stoppedWaiter: (() => void) | null = null;

  private next(op: string): Promise<Record<string, unknown>> {
    return new Promise((resolve) => {
      let list = this.waiters.get(op);
      if (!list) this.waiters.set(op, (list = []));
      list.push(resolve);
    });
  }

  /**
   * Makes `vmas` of the new task lazy: creates its uffd, registers them and
   * hands them to the pager, whose faults are served from here on.
   */
  async attach(rt: RemoteTask, chain: readonly Image[], vmas: readonly VmaImage[]): Promise<void> {
    if (vmas.length === 0) return;
    const made = rt.sc.call(SYS.userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (made < 0n) throw new TsnapError('kernel', `userfaultfd() in the restored process failed (errno ${-made}); restore --lazy needs CONFIG_USERFAULTFD and CAP_SYS_PTRACE`);
    const taskFd = Number(made);
    let uffd = -1;
    const pidfd = pidfdOpen(rt.pid);
    this.pidfds.push(pidfd);
    try {
      uffd = pidfdGetfd(pidfd, taskFd);
    } finally {
      rt.sc.check('close(uffd)', SYS.close, taskFd);
    }
    this.uffds.push(uffd);
    const granted = uffdApiMissing(uffd, FEATURES);
    if ((granted & BigInt(FEATURES)) !== BigInt(FEATURES)) throw new TsnapError('kernel', 'this kernel\'s userfaultfd lacks the fork/remap/remove/unmap events restore --lazy needs');
    for (const v of vmas) {
      try {
        uffdRegisterMissing(uffd, v.start, v.end - v.start);
      } catch (err) {
        if (err instanceof SysError) throw new TsnapError('kernel', `cannot make the memory at 0x${v.start.toString(16)} lazy (${err.code}); restore without --lazy`);
        throw err;
      }
      this.stats.lazyBytes += v.end - v.start;
    }
    const source: SourceSpec = {
      levels: chain.map((c) => ({ dir: c.dir, kind: c.inventory.kind, runs: c.pagemap.runs, chunks: c.pagemap.chunks })),
      within: vmas.map((v) => ({ start: v.start, end: v.end })),
    };
    const t0 = process.hrtime.bigint();
    await this.workerUp;
    this.stats.workerWaitUs += Number(process.hrtime.bigint() - t0) / 1000;
    const added = this.next('added');
    this.worker.postMessage({ op: 'add', fd: uffd, name: `process ${rt.pid}`, source });
    await added;
  }

  /** Before the processes run: the guard holds its copies (the pager may die from now on). */
  async arm(): Promise<void> {
    if (this.pidfds.length === 0) return;
    const ack = this.guardLines.next();
    const line = `arm ${process.pid} ${this.pidfds.join(' ')} - ${this.uffds.join(' ')}\n`;
    writeAll(this.guardW, line);
    const got = await ack;
    if (got.done || got.value !== 'armed') throw new TsnapError('restoreFailed', 'the lazy restore guard did not start; nothing was started');
  }

  /** The processes run: the background fill may start. */
  release(): void {
    this.worker.postMessage({ op: 'release' });
  }

  /**
   * restore --detach: moves the pager to the background process. If that
   * process is not there, the worker goes on and tsnap exits only once
   * every page is in.
   */
  async handover(): Promise<string> {
    const bg = this.background!;
    const lines = this.backgroundLines!;
    const booted = await Promise.race([lines.next(), this.ended.then(() => null)]);
    if (booted === null) return this.finish();
    if (booted.done || booted.value !== 'booted') {
      await this.ended;
      return 'the background pager did not start: tsnap filled the memory itself';
    }
    const stopped = new Promise<void>((resolve) => { this.stoppedWaiter = resolve; });
    this.worker.postMessage({ op: 'stop' });
    const r = await Promise.race([stopped.then(() => 'stopped' as const), this.ended.then(() => 'ended' as const)]);
    if (r === 'ended') return this.finish();
    const state = this.stoppedState!;
    bg.stdin!.write(JSON.stringify({ tsnapPid: process.pid, guardFd: this.guardW, fillDelayMs: fillDelay(), state }) + '\n');
    const ok = await lines.next();
    if (ok.done || ok.value !== 'ok') {
      this.worker.postMessage({ op: 'resume' });
      const end = await this.ended;
      return `the background pager did not take over (${ok.value ?? 'it ended'}): tsnap filled the memory itself (${end.how})`;
    }
    bg.unref();
    (bg.stdin as unknown as { unref?: () => void }).unref?.();
    (bg.stdout as unknown as { unref?: () => void }).unref?.();
    bg.stdin!.end();
    this.closeOwn(state.contexts.map((c) => c.fd));
    return `pager process ${bg.pid} (guard ${this.guard.pid}) fills the rest of the memory`;
  }

  /** restore without --detach: the worker fills everything; tsnap's copies go when it is done. */
  async finish(): Promise<string> {
    const end = await this.ended;
    this.closeOwn([]);
    if (end.how === 'failed') return `the lazy fill failed: ${end.message}`;
    return `lazy fill done: ${end.stats.faults} faults, ${end.stats.bytesFaulted + end.stats.bytesFilled} bytes`;
  }

  /** The restore failed: nothing of the lazy machinery may stay. */
  async abort(): Promise<void> {
    await this.worker.terminate().catch(() => 0);
    this.background?.kill('SIGKILL');
    this.guard.kill('SIGKILL');
    this.closeOwn(this.uffds);
  }

  /** Closes tsnap's copies: `fds` (uffds of the worker, shared fd table) only when they still are uffds. */
  private closeOwn(fds: number[]): void {
    if (this.finished) return;
    this.finished = true;
    void this.worker.terminate().catch(() => 0);
    for (const fd of new Set(fds)) {
      try {
        if (readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[userfaultfd]') closeSync(fd);
      } catch { /* closed */ }
    }
    for (const fd of [...this.pidfds, this.guardW]) { try { closeSync(fd); } catch { /* closed */ } }
    this.guard.unref();
    (this.guard.stdout as unknown as { unref?: () => void }).unref?.();
    if (this.logFd !== 2) { try { closeSync(this.logFd); } catch { /* closed */ } }
  }
}

function writeAll(fd: number, s: string): void {
  const b = Buffer.from(s);
  let at = 0;
  while (at < b.length) at += writeSync(fd, b, at, b.length - at);
}

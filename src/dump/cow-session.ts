/**
 * Copy-on-write dumps: the target is frozen only for its state, the
 * protection of its memory and the copy of the little that cannot be
 * protected; its memory is copied while it runs.
 *
 * While frozen: a userfaultfd is made inside the target (it binds the mm of
 * its creator) and taken over with pidfd_getfd; its private anonymous VMAs
 * that hold pages to store are registered for synchronous write-protect
 * faults (no WP_ASYNC: a write blocks until tsnap lets it go) and every
 * page to store is protected. Memory that cannot be registered (private
 * file mappings: synchronous WP takes anonymous, shmem and hugetlb memory
 * only; shared memory, which other processes may write without faulting
 * here; VMAs the program or a tracking already registered: EBUSY) is
 * copied before the target resumes.
 *
 * While it runs: the main thread copies the protected pages in address
 * order and unprotects each chunk once read; the fault server
 * (tsnap-cow.c, a native thread) saves a page the target is about to write before letting
 * the write go on, and the main thread takes the saved copy instead of
 * what it read. Either way a stored page holds its bytes at the freeze.
 *
 * Pages that were never touched at the freeze are not stored (restore maps
 * them empty), so they are not protected either (no WP_UNPOPULATED): a
 * later first write there costs the target nothing.
 *
 * If tsnap dies (even SIGKILL), the kernel closes its copy of the uffd,
 * the last one: every range is unregistered and unprotected, and blocked
 * writers wake (checked by test/cow.test.ts).
 */
import { closeSync, readFileSync, writeSync } from 'node:fs';
import { pidfdOpen, pidfdGetfd, pidfdExited, pidfdSendSignal, pipe2, SYS, SIGKILL, O_CLOEXEC, O_NONBLOCK, PROT_READ, SysError, type ProcMem } from '../sys/index.js';
import { uffdUnregister } from '../sys/uffd-wp.js';
import { CowServerThread } from '../sys/cow-server.js';
import { UFFD_FEATURE, UFFD_EVENT } from '../sys/uapi.js';
import { RemoteSyscaller } from '../inject/remote-syscall.js';
import { uffdApi, uffdRegisterWp, uffdWriteProtect } from '../track/uffd.js';
import type { FrozenProcess } from '../freeze/frozen-process.js';
import type { Vma } from '../proc/maps.js';
import type { VmaClass, DumpRange } from './memory-plan.js';
import { copyPages, type PageDumpResult } from './page-dumper.js';
import type { PageSink } from './page-sink.js';
import { CTL, TIMES, PAGE, EARLY_LOG_PAGES, indexRanges, indexedPages, pageIndex, halves, type CowConfig } from './cow-shared.js';
import type { CowStats, PageRun } from '../../formats/schema.js';
import { pausePoint } from '../fault-points.js';
import { mark } from '../trace.js';
import { WriteProtector } from '../sys/uffd-wp.js';
import type { Pagemap } from '../sys/index.js';
import { selectForCow } from './cow-selection.js';
import { AlignedUnprotect } from './cow-unprotect.js';
import type { Prearmed } from './cow-prearm.js';

/**
 * Pages the fault server may hold ahead of the copy (64 MiB); beyond,
 * writers wait for the copy to reach them. TSNAP_COW_STORE_PAGES: tests
 * shrink it to make that happen.
 */
const STORE_PAGES = Number(process.env.TSNAP_COW_STORE_PAGES) > 0 ? Number(process.env.TSNAP_COW_STORE_PAGES) : 16384;
const BLOCK_PAGES = 16;

/** The copy could not be kept consistent: the caller dumps again, frozen. */
export class CowLost extends Error {}

/**
 * The fault server (tsnap-cow.c): a native thread of tsnap's, started
 * before the freeze, asleep until configured. Not a node Worker: a second
 * V8 isolate cost ~10 MiB of peak RSS (docs/performance.md, "the
 * copy-on-write dump's fault server").
 */
export class CowWorker {
  private wake: [number, number] | null = null;
  private readonly thread: CowServerThread;
  /** The fault store and its free ring: allocated (and zeroed by the kernel) before the freeze, not during it. */
  readonly store = new SharedArrayBuffer(STORE_PAGES * PAGE);
  readonly free = new SharedArrayBuffer(STORE_PAGES * 4);
  readonly ctl = new Int32Array(new SharedArrayBuffer(CTL.SIZE * 4));
  readonly times = new Float64Array(new SharedArrayBuffer(TIMES.SIZE * 8));
  /** Memory the thread writes until stop() (go()'s slots): held here, whatever the caller keeps. */
  private readonly inUse: SharedArrayBuffer[] = [];

  private constructor() {
    this.thread = new CowServerThread(this.ctl.buffer as SharedArrayBuffer, this.times.buffer as SharedArrayBuffer);
  }

  static start(): CowWorker {
    return new CowWorker();
  }

  /** What the fault server stopped on (its faults then wait for the copy, and the dump is taken again), or null. */
  get failure(): Error | null {
    const e = Atomics.load(this.ctl, CTL.FAILED);
    return e ? new SysError('the copy-on-write fault server', e) : null;
  }

  go(cfg: Omit<CowConfig, 'wakeFd'>): void {
    this.wake ??= pipe2(O_CLOEXEC);
    this.inUse.push(cfg.slots);
    this.thread.go({ ...cfg, wakeFd: this.wake[0] });
  }

  /** A uffd made before the freeze (cow-prearm.ts): closed by stop() unless taken. */
  private early = -1;

  /** What the early phase let go, for the protection passes (cow-prearm.ts). */
  readonly earlyLog = new Float64Array(new SharedArrayBuffer(EARLY_LOG_PAGES * 8));

  /** Serves the faults on `uffd` by unprotecting until the freeze; this object owns the fd from now on. */
  goEarly(uffd: number, huge: { start: number; end: number }[]): void {
    this.early = uffd;
    this.wake = pipe2(O_CLOEXEC);
    this.thread.goEarly(uffd, this.wake[0], this.earlyLog.buffer as SharedArrayBuffer, huge);
  }

  /**
   * Frozen: ends the early phase and returns the uffd. Once this returns,
   * the server unprotects nothing until go(): a scan now sees every page
   * written since it was protected.
   */
  endEarly(): number {
    // The server may be draining (4): it lets go of what it read, then goes idle (1).
    while (Atomics.compareExchange(this.ctl, CTL.EARLY, 1, 2) === 4) this.thread.wait(CTL.EARLY, 4, 100);
    // No byte on the wake pipe: one left unread would tell the serving phase to stop. The
    // server sees the phase ended at its next wake-up (the first fault after the release).
    const fd = this.early;
    this.early = -1;
    return fd;
  }

  /** Waits until the server protected its share (the target is frozen meanwhile: no fault can come). */
  protected(): void {
    while (Atomics.load(this.ctl, CTL.PROTECTED) === 0) this.thread.wait(CTL.PROTECTED, 0, 1000);
    const r = Atomics.load(this.ctl, CTL.PROTECTED);
    if (r !== 1) throw new SysError('ioctl(UFFDIO_WRITEPROTECT) by the fault server', r);
  }

  /** Stops the server after it has read every pending message; safe more than once. */
  stop(): void {
    // STOP before the byte: the server checks it when the byte wakes it.
    Atomics.store(this.ctl, CTL.STOP, 1);
    if (this.wake) {
      try { writeSync(this.wake[1], Buffer.from([1])); } catch { /* closed */ }
    }
    this.thread.stop();
    this.inUse.length = 0;
    if (this.wake) {
      for (const fd of this.wake) { try { closeSync(fd); } catch { /* closed */ } }
      this.wake = null;
    }
    if (this.early >= 0) { try { closeSync(this.early); } catch { /* closed */ } this.early = -1; }
  }
}

export interface CowCopyArgs {
  pid: number;
  frozen: FrozenProcess;
  vmas: readonly Vma[];
  classes: readonly VmaClass[];
  /** What to store, as a full dump selects it; read here while frozen. */
  selection: Iterable<DumpRange>;
  writer: PageSink;
  mem: ProcMem;
  worker: CowWorker;
  /** Lets the target run (called once its memory is protected). */
  release: () => void;
  /**
   * The final round of an incremental dump: the tracking's uffd (async
   * write-protect) holds the VMAs; they leave it before ours takes them.
   * Called once per VMA; `dropped` is set as soon as one did.
   */
  tracking?: { uffd: number; dropped: boolean };
  onProgress?: (bytes: number) => void;
  /**
   * Memory protected before the freeze (cow-prearm.ts; full dumps only):
   * `selection` is then not read, the pages are selected here, with
   * `pagemap`, by a scan that also finds what to protect again.
   */
  prearmed?: { done: Prearmed; pagemap: Pagemap } | null;
}

export interface CowCopyResult {
  pages: PageDumpResult;
  /** Freeze to release (µs). */
  frozenUs: number;
  stats: CowStats;
}

/**
 * Private anonymous memory: the kind synchronous write-protection takes, and
 * nobody else writes. Readable too: the fault server saves a page with
 * process_vm_readv, which write-only memory refuses.
 */
export function protectable(v: Vma, cls: VmaClass): boolean {
  return cls === 'private' && v.inode === 0 && (v.prot & PROT_READ) !== 0
    && (v.path === '' || v.path === '[heap]' || v.path === '[stack]' || v.path.startsWith('[anon:'));
}

export async function copyWithCow(a: CowCopyArgs): Promise<CowCopyResult> {
  const { pid, vmas, writer, mem, worker } = a;
  const tArm = process.hrtime.bigint();
  // A full dump protected early selects its pages itself (selectForCow): the generator is never run.
  const selection = a.prearmed && !a.tracking ? [] : [...a.selection];
  const stats: CowStats = { pagesProtected: 0, pagesFrozenCopy: 0, faults: 0, faultPages: 0, faultsDeferred: 0, faultMeanUs: 0, faultMaxUs: 0, copyUs: 0, armUs: 0 };
  let uffd = -1;
  let released = false;
  const release = () => { if (!released) { released = true; a.release(); } };
  try {
    const pre = a.prearmed && !a.tracking ? a.prearmed : null;
    const wanted = new Set(pre
      ? vmas.map((_, i) => i).filter((i) => protectable(vmas[i], a.classes[i]))
      : selection.filter((r) => protectable(vmas[r.vma], a.classes[r.vma])).map((r) => r.vma));
    uffd = pre ? worker.endEarly() : wanted.size ? makeUffd(pid, a.frozen, mem) : -1;
    mark('cow: uffd ready');
    const registered = new Set<number>();
    if (pre) {
      // VMAs inside a range registered early still are (registration follows splits
      // and moves); VMAs mapped since are registered now (each call takes the mmap lock).
      for (const i of wanted) {
        if (insideAny(pre.done.ranges, vmas[i])) { registered.add(i); continue; }
        try { uffdRegisterWp(uffd, vmas[i].start, vmas[i].end - vmas[i].start); registered.add(i); } catch (err) { if (!(err instanceof SysError)) throw err; }
      }
      dropLeftovers(uffd, pre.done.ranges, vmas, registered);
    } else if (uffd >= 0) {
      uffdApi(uffd, UFFD_FEATURE.EVENT_REMAP | UFFD_FEATURE.EVENT_REMOVE | UFFD_FEATURE.EVENT_UNMAP);
      for (const i of wanted) {
        try {
          if (a.tracking) {
            a.tracking.dropped = true;
            try { uffdUnregister(a.tracking.uffd, vmas[i].start, vmas[i].end - vmas[i].start); } catch { /* not tracked: nothing to drop */ }
          }
          uffdRegisterWp(uffd, vmas[i].start, vmas[i].end - vmas[i].start);
          registered.add(i);
        } catch (err) {
          // EBUSY: the program's own uffd (or a tracking) has it; copied now, frozen.
          if (!(err instanceof SysError)) throw err;
        }
      }
    }
    let cowSel: DumpRange[];
    let frozenSel: DumpRange[];
    if (pre) {
      const sel = selectForCow(pre.pagemap, vmas, a.classes, registered);
      mark('cow: scanned');
      cowSel = sel.cow;
      frozenSel = sel.frozen;
      // Written or first touched since the early protection: protected again, frozen.
      const wp = new WriteProtector(uffd);
      for (const r of sel.written) {
        const e = wp.set(r.start, r.end - r.start, true);
        if (e) throw new CowLost(`memory at 0x${r.start.toString(16)} could not be write-protected again (errno ${e})`);
        stats.pagesReprotected = (stats.pagesReprotected ?? 0) + (r.end - r.start) / PAGE;
      }
      stats.pagesReprotected ??= 0;
      stats.preStopUs = pre.done.stopUs;
      stats.prearmUs = pre.done.armUs;
      stats.earlyFaults = Atomics.load(worker.ctl, CTL.EARLY_FAULTS);
      mark('cow: protected again');
    } else {
      cowSel = selection.filter((r) => registered.has(r.vma));
      frozenSel = selection.filter((r) => !registered.has(r.vma));
    }
    const ranges = indexRanges(cowSel);
    const nPages = indexedPages(ranges);
    stats.pagesProtected = nPages;
    const slots = new SharedArrayBuffer(Math.max(4, nPages * 4));
    const { store, free } = worker;
    // Protecting walks page tables (tens of ms per GiB): the worker takes half, in parallel.
    const [mine, theirs] = pre ? [[], []] : halves(ranges);
    if (uffd >= 0) worker.go({ pid, uffd, ranges, slots, store, free, blockPages: BLOCK_PAGES, protect: theirs });
    mark('cow: worker configured');
    for (const r of mine) uffdWriteProtect(uffd, r.start, r.len, true);
    const early = await copyPages(pid, vmas, frozenSel, writer, mem, { onProgress: a.onProgress });
    stats.pagesFrozenCopy = early.pagesWritten;
    mark('cow: frozen copy done');
    // With nothing for the worker to protect (early protection), there is no need to wait for it:
    // a fault before it reads its configuration waits in the uffd until it does.
    if (uffd >= 0 && !pre) worker.protected();
    stats.armUs = Number(process.hrtime.bigint() - tArm) / 1000;
    const frozenUs = Number(process.hrtime.bigint() - a.frozen.frozenAt) / 1000;
    release();
    mark('cow: released');
    pausePoint('cow-running');

    const tCopy = process.hrtime.bigint();
    const ctl = worker.ctl;
    const slotOf = new Int32Array(slots);
    const saved = Buffer.from(store);
    const ring = new Int32Array(free);
    const capacity = ring.length;
    let unreadable = false;
    // Unprotected in whole 2 MiB blocks where the reads allow: part of a huge page would split it (cow-unprotect.ts).
    const unprotect = new AlignedUnprotect((start, len) => {
      try {
        uffdWriteProtect(uffd, start, len, false);
      } catch (err) {
        // ENOENT: the range is no longer mapped; what was read of it may be another mapping's.
        if (!(err instanceof SysError)) throw err;
        unreadable = true;
      }
    });
    const late = await copyPages(pid, vmas, cowSel, writer, mem, {
      onProgress: (bytes) => {
        a.onProgress?.(bytes);
        if (Atomics.load(ctl, CTL.LOST)) throw lostError(worker);
      },
      onVanished: () => { unreadable = true; },
      afterRead: (buf, read) => {
        let off = 0;
        let last = -1;
        for (const p of read) {
          const first = pageIndex(ranges, p.start);
          for (let k = 0; k < p.len / PAGE; k++) {
            // A page the fault server saved holds the bytes of the freeze; what was read may be newer.
            const s = Atomics.load(slotOf, first + k);
            if (s) {
              saved.copy(buf, off + k * PAGE, (s - 1) * PAGE, s * PAGE);
              // Its slot is free again: the ring entry first, then the head that publishes it.
              const head = Atomics.load(ctl, CTL.FREE_HEAD);
              ring[head % capacity] = s - 1;
              Atomics.store(ctl, CTL.FREE_HEAD, head + 1);
            }
          }
          unprotect.read(p.start, p.len);
          off += p.len;
          last = first + p.len / PAGE;
        }
        if (last >= 0) Atomics.store(ctl, CTL.CURSOR, last);
      },
    });
    unprotect.flush();
    Atomics.store(ctl, CTL.CURSOR, nPages);
    worker.stop();
    closeSync(uffd);
    uffd = -1;
    if (unreadable && !Atomics.load(ctl, CTL.LOST)) {
      Atomics.store(ctl, CTL.LOST, 1);
      Atomics.store(ctl, CTL.LOST_EVENT, 1);
    }
    if (Atomics.load(ctl, CTL.LOST)) throw lostError(worker);
    if (worker.failure) throw new CowLost(`the copy-on-write fault server failed (${worker.failure.message})`);
    stats.copyUs = Number(process.hrtime.bigint() - tCopy) / 1000;
    stats.faults = Atomics.load(ctl, CTL.FAULTS);
    stats.faultPages = Atomics.load(ctl, CTL.FAULT_PAGES);
    stats.faultsDeferred = Atomics.load(ctl, CTL.DEFERRED);
    stats.faultMeanUs = stats.faults ? worker.times[TIMES.SERVICE_NS] / stats.faults / 1000 : 0;
    stats.faultMaxUs = worker.times[TIMES.MAX_SERVICE_NS] / 1000;
    const runs: PageRun[] = [...early.runs, ...late.runs].sort((x, y) => x.start - y.start);
    return {
      pages: { runs, pagesWritten: early.pagesWritten + late.pagesWritten, pagesSlowPath: early.pagesSlowPath + late.pagesSlowPath },
      frozenUs,
      stats,
    };
  } finally {
    // Closing the last copy unprotects everything and wakes any blocked writer.
    worker.stop();
    if (uffd >= 0) closeSync(uffd);
  }
}

function insideAny(ranges: readonly { start: number; end: number }[], v: Vma): boolean {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (v.start < ranges[mid].start) hi = mid - 1;
    else if (v.start >= ranges[mid].end) lo = mid + 1;
    else return v.end <= ranges[mid].end;
  }
  return false;
}

/**
 * VMAs protected before the freeze that the freeze does not take
 * copy-on-write (made unreadable since, say): they leave the uffd, their
 * protection with them. Should that fail, their write faults still only
 * wake the writer (they are outside the worker's ranges).
 */
function dropLeftovers(uffd: number, early: readonly { start: number; end: number }[], vmas: readonly Vma[], registered: ReadonlySet<number>): void {
  let k = 0;
  vmas.forEach((v, i) => {
    if (registered.has(i)) return;
    while (k < early.length && early[k].end <= v.start) k++;
    for (let j = k; j < early.length && early[j].start < v.end; j++) {
      const from = Math.max(v.start, early[j].start);
      const to = Math.min(v.end, early[j].end);
      try { uffdUnregister(uffd, from, to - from); } catch { /* not ours, or gone */ }
    }
  });
}

function lostError(worker: CowWorker): CowLost {
  const ev = Atomics.load(worker.ctl, CTL.LOST_EVENT);
  const what = ev === UFFD_EVENT.UNMAP ? 'unmapped' : ev === UFFD_EVENT.REMOVE ? 'dropped (MADV_DONTNEED or MADV_REMOVE)' : ev === UFFD_EVENT.REMAP ? 'moved (mremap)' : 'made unreadable';
  const at = worker.times[TIMES.LOST_AT];
  return new CowLost(`the process ${what} memory not yet copied${at ? ` at 0x${at.toString(16)}` : ''} while it ran`);
}

/**
 * userfaultfd() run inside the frozen target, taken over, and closed there
 * again: nothing stays in the target but the registrations. Without
 * UFFD_USER_MODE_ONLY: with it a write by the kernel on the program's behalf
 * (read() into a protected buffer) would fail with EFAULT instead of
 * waiting. That needs CAP_SYS_PTRACE in the target; without it, -1.
 */
export function makeUffd(pid: number, frozen: FrozenProcess, mem: ProcMem): number {
  const sc = new RemoteSyscaller(frozen.leader, mem);
  let targetFd = -1;
  let token = 0n;
  let pidfd = -1;
  try {
    const made = sc.callLeaving(SYS.userfaultfd, [O_CLOEXEC | O_NONBLOCK], { nr: SYS.close, args: [0], resultSlot: 0 });
    token = made.token;
    if (made.ret < 0n) return -1;
    targetFd = Number(made.ret);
    pidfd = pidfdOpen(pid);
    const fd = pidfdGetfd(pidfd, targetFd);
    sc.checked('close(uffd)', sc.callUndoing(token, SYS.close, targetFd));
    targetFd = -1;
    return fd;
  } finally {
    if (targetFd >= 0) {
      try { sc.callUndoing(token, SYS.close, targetFd); } catch { /* the guardian closes it at release */ }
    }
    if (pidfd >= 0) closeSync(pidfd);
  }
}

const napCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Kill mode after a copy-on-write dump: the target is no longer traced, so
 * it is killed by signal and waited for. It ran untraced during the copy:
 * it may have exited, and its pid be another process's by now; through
 * `pidfd` (the caller's, opened before the dump) only the process dumped is
 * signalled. Without one, by pid.
 */
export function killReleased(pid: number, pidfd: number | null = null): void {
  if (pidfd !== null) {
    if (pidfdSendSignal(pidfd, SIGKILL) !== 0) return; // ESRCH: it has ended
    // Dead once its pidfd polls readable (a zombie at least), as below.
    for (let i = 0; i < 50 && !pidfdExited(pidfd, 100); i++) { /* at most 5 s */ }
    return;
  }
  try { process.kill(pid, 'SIGKILL'); } catch { return; }
  for (let i = 0; i < 5000; i++) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (state === 'Z' || state === 'X') return;
    } catch {
      return;
    }
    Atomics.wait(napCell, 0, 0, 1);
  }
}

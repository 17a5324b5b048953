/**
 * VmFlags read before the freeze, with proof that they still hold at it.
 *
 * Reading /proc/PID/smaps walks every page table of the target (25-36 ms
 * per GiB of 4 KiB pages here, C probe), and VmFlags are in smaps only. A
 * madvise() or mlock() changes them in place with nothing in
 * /proc/PID/maps to tell (test/frozen-state.test.ts), so a read made
 * before the freeze cannot simply be trusted. But flags change only
 * through a few syscalls of the target's own threads (process_madvise
 * from elsewhere takes only advice that leaves them alone). So before the
 * read, a perf counter is put on each thread for each such syscall
 * (tracepoints, with ftrace filters on the arguments that matter), and at
 * the freeze the read is trusted only if:
 *   - none of them ran: madvise with advice that sets or clears a flag,
 *     mlock/munlock/mlockall/munlockall/mlock2, prctl THP-disable or
 *     memory-merge, mmap MAP_FIXED, mremap, and munmap and brk (a VMA
 *     unmapped and mapped again at the same start could carry other flags);
 *   - no call of those syscalls was under way when the counters started
 *     (its exit would be counted without its entry: at the freeze every
 *     thread is stopped outside any syscall, so entries equal exits
 *     otherwise);
 *   - the threads are the ones counted (a new thread has no counter);
 *   - every VMA of the frozen maps starts where a VMA of the read started
 *     (a VMA that grew in place or merged keeps the flags it had).
 * Otherwise the caller reads smaps frozen, as before.
 *
 * The same counters say whether pages present before the freeze can
 * still be taken as present at it (checkDrops(), dump/early-scan.ts): an
 * anonymous page present or swapped leaves the page tables only through a
 * syscall of the target's own threads (madvise or process_madvise with
 * advice that drops or guards, munmap, mremap, mmap MAP_FIXED, brk), apart
 * from two the image may ignore: a MADV_FREE page the kernel reclaims (its
 * content is then the old one or zeros, both what the program may see),
 * and UFFDIO_MOVE from a userfaultfd the program gave away (not watched:
 * an image of such a program may keep a moved-out page).
 *
 * The tracepoint ids come from tracefs, mounted (when it is not) in a
 * mount namespace of a short-lived child: nothing outside it sees the
 * mount. Without tracefs or perf events, start() returns null.
 */
import { spawnSync } from 'node:child_process';
import { close as closeAsync, closeSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { openTracepointCounter, readCounter } from '../sys/perf-event.js';

/** Advice that sets or clears a VmFlag restore keeps (VMA_RESTORED_FLAGS), or NORMAL, which clears sr/rr. */
const FLAG_ADVICE = [0, 1, 2, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19];
const PR_SET_THP_DISABLE = 41;
const PR_SET_MEMORY_MERGE = 67;
const MAP_FIXED = 0x10;
const NR = { mmap: 9, munmap: 11, brk: 12, mremap: 25, madvise: 28, mlock: 149, munlock: 150, mlockall: 151, munlockall: 152, prctl: 157, mlock2: 325, process_madvise: 440 };
/** Advice that takes pages out of the page tables: DONTNEED, FREE, REMOVE, DONTNEED_LOCKED, HWPOISON. */
const DROP_ADVICE = [4, 8, 9, 24, 100];
/** GUARD_INSTALL (which drops what it covers too), GUARD_REMOVE. */
const GUARD_ADVICE = [102, 103];
const adviceIn = (list: number[]) => list.map((b) => `behavior == ${b}`).join(' || ');
const onBothMadvise = (list: number[]) => ['madvise', 'process_madvise'].map((s) => ({ event: `syscalls/sys_enter_${s}`, filter: adviceIn(list) }));
const DROPS = onBothMadvise(DROP_ADVICE);
const GUARDS = onBothMadvise(GUARD_ADVICE);

const CHANGES: { event: string; filter: string | null }[] = [
  { event: 'syscalls/sys_enter_madvise', filter: FLAG_ADVICE.map((b) => `behavior == ${b}`).join(' || ') },
  { event: 'syscalls/sys_enter_prctl', filter: `option == ${PR_SET_THP_DISABLE} || option == ${PR_SET_MEMORY_MERGE}` },
  { event: 'syscalls/sys_enter_mmap', filter: `flags & ${MAP_FIXED}` },
  ...['mlock', 'munlock', 'mlockall', 'munlockall', 'mlock2', 'mremap', 'munmap', 'brk'].map((s) => ({ event: `syscalls/sys_enter_${s}`, filter: null })),
];
const IDS = Object.values(NR).map((n) => `id == ${n}`).join(' || ');
const ENTER = 'raw_syscalls/sys_enter';
const EXIT = 'raw_syscalls/sys_exit';

/** More threads than this: not worth ~17 counters each; smaps is read frozen. */
const MAX_THREADS = 64;

let ids: Map<string, number> | null | undefined;

/** Tracepoint ids by event name, read once per run; null when tracefs cannot be had. */
function tracepointIds(): Map<string, number> | null {
  if (ids !== undefined) return ids;
  const names = [...new Set([...CHANGES, ...DROPS, ...GUARDS].map((c) => c.event)), ENTER, EXIT];
  ids = null;
  try {
    let text: string;
    const base = '/sys/kernel/tracing/events';
    if (existsSync(`${base}/raw_syscalls`)) {
      text = names.map((n) => readFileSync(`${base}/${n}/id`, 'utf8')).join('');
    } else {
      const cat = names.map((n) => `cat ${base}/${n}/id`).join(' && ');
      const r = spawnSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', `mount -t tracefs none /sys/kernel/tracing && ${cat}`], { encoding: 'utf8', timeout: 5000 });
      if (r.status !== 0) return null;
      text = r.stdout;
    }
    const got = text.trim().split('\n').map(Number);
    if (got.length !== names.length || got.some((n) => !Number.isInteger(n) || n <= 0)) return null;
    ids = new Map(names.map((n, i) => [n, got[i]]));
  } catch {
    ids = null;
  }
  return ids;
}

const sum = (fds: number[]) => fds.reduce((n, fd) => n + readCounter(fd), 0);

function threadsOf(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).map(Number).sort((a, b) => a - b);
}

export class VmFlagsWatch {
  private constructor(
    private readonly pid: number,
    private readonly tids: number[],
    private readonly changes: number[],
    private readonly drops: number[],
    private readonly guards: number[],
    private readonly enters: number[],
    private readonly exits: number[],
  ) {}

  /** Counters on every thread of `pid`, from now on; null when unavailable (the caller reads smaps frozen). */
  static start(pid: number): VmFlagsWatch | null {
    if (process.env.TSNAP_FROZEN_BASELINE === '1' || process.env.TSNAP_VMFLAGS_WATCH === '0') return null;
    const tp = tracepointIds();
    if (!tp) return null;
    const fds: number[] = [];
    const open = (event: string, tid: number, filter: string | null) => {
      const fd = openTracepointCounter(tp.get(event)!, tid, filter);
      fds.push(fd);
      return fd;
    };
    try {
      const tids = threadsOf(pid);
      if (tids.length > MAX_THREADS) return null;
      const changes: number[] = [];
      const drops: number[] = [];
      const guards: number[] = [];
      const enters: number[] = [];
      const exits: number[] = [];
      for (const tid of tids) {
        for (const c of CHANGES) changes.push(open(c.event, tid, c.filter));
        for (const c of DROPS) drops.push(open(c.event, tid, c.filter));
        for (const c of GUARDS) guards.push(open(c.event, tid, c.filter));
        enters.push(open(ENTER, tid, IDS));
        exits.push(open(EXIT, tid, IDS));
      }
      return new VmFlagsWatch(pid, tids, changes, drops, guards, enters, exits);
    } catch {
      // No perf events (paranoid settings, a kernel without syscall tracepoints), or a thread gone.
      for (const fd of fds) closeSync(fd);
      return null;
    }
  }

  /**
   * With the target frozen: whether VmFlags read after start() are still
   * its flags, for VMAs starting at `starts` (from the frozen maps). Why
   * not, when not.
   */
  check(flags: ReadonlyMap<number, string[]>, starts: readonly number[]): string | null {
    const why = this.common();
    if (why) return why;
    const changed = sum(this.changes);
    if (changed) {
      const per = CHANGES.map((c, i) => [c.event.replace('syscalls/sys_enter_', ''), this.changes.filter((_, k) => k % CHANGES.length === i).reduce((n, fd) => n + readCounter(fd), 0)] as const).filter(([, n]) => n > 0);
      return `${changed} syscalls that may change VmFlags: ${per.map(([e, n]) => `${e} ${n}`).join(', ')}`;
    }
    const missing = starts.find((s) => !flags.has(s));
    if (missing !== undefined) return `VMA 0x${missing.toString(16)} was mapped since`;
    return null;
  }

  /**
   * With the target frozen: whether no page present (or swapped) when a
   * scan ran after start() can have left the page tables since (see the
   * comment at the top). Why not, when not. The caller checks that its
   * scan covered the memory it now takes from it.
   */
  checkDrops(): string | null {
    const why = this.common();
    if (why) return why;
    const changed = sum(this.changes);
    if (changed) return `${changed} syscalls that may unmap or move memory`;
    const dropped = sum(this.drops) + sum(this.guards);
    if (dropped) return `${dropped} madvise calls that drop pages`;
    return null;
  }

  /**
   * With the target stopped: whether guard pages scanned after start()
   * are still its guards: none installed or removed, nothing unmapped,
   * moved or mapped over. Why not, when not.
   */
  checkGuards(): string | null {
    const why = this.common();
    if (why) return why;
    const changed = sum(this.changes);
    if (changed) return `${changed} syscalls that may unmap or move memory`;
    const guarded = sum(this.guards);
    if (guarded) return `${guarded} madvise calls that install or remove guards`;
    return null;
  }

  /** Same threads, and no watched syscall under way when the counters started. */
  private common(): string | null {
    const now = threadsOf(this.pid);
    if (now.length !== this.tids.length || now.some((t, i) => t !== this.tids[i])) return 'threads came or went';
    const enters = sum(this.enters);
    const exits = sum(this.exits);
    if (enters !== exits) return `a watched syscall was under way when the watch began (${enters} entries, ${exits} exits)`;
    return null;
  }

  /**
   * Closes the counters, on libuv's pool, one after the other: the kernel
   * releases a tracepoint's last perf event only after an RCU grace period
   * (synchronize_rcu_tasks_trace, then synchronize_rcu), under one mutex
   * for every perf event of the host: 0.3-1.1 s for the watch of a
   * two-thread process here (/proc/PID/stack of the closing threads). That
   * must not stop the main thread, let alone happen while the target is
   * frozen; and closed all at once, the closes took every thread of the
   * pool for that long (a post-copy receiver's fault poll and reads queued
   * behind them). In a chain they hold one. Again: nothing (an fd number is
   * never closed twice: it may be someone's by then).
   */
  close(): void {
    const fds = [...this.changes.splice(0), ...this.drops.splice(0), ...this.guards.splice(0), ...this.enters.splice(0), ...this.exits.splice(0)];
    const next = (): void => {
      const fd = fds.shift();
      if (fd !== undefined) closeAsync(fd, next);
    };
    next();
  }

}

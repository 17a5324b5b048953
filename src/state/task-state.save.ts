/**
 * The per-thread and per-process state that only the kernel or the task
 * itself can tell: registers, XSAVE area, signal mask and actions, alternate
 * stack, TLS-related addresses. What ptrace or /proc can read from outside
 * is read from outside; the rest through remote syscalls into one scratch
 * mapping.
 */
import { mark } from '../trace.js';
import {
  getRobustList, SYS, PR, NSIG, KSIGACTION_SIZE, STACK_T_SIZE, SysError,
  SECCOMP_MODE_FILTER,
} from '../sys/index.js';
import { RemoteSyscaller, type Scratch } from '../inject/remote-syscall.js';
import { runBatch, batchArea, batchAreaSize, batching, BATCH_PROT, type BatchCall } from '../inject/syscall-batch.js';
import type { FrozenProcess } from '../freeze/frozen-process.js';
import type { ProcMem } from '../sys/memory.js';
import { pendingRestart, type FrozenTask } from '../freeze/frozen-task.js';
import type { ThreadImage, SignalImage, SigactionImage, ProcessImage, PosixTimerImage } from '../../formats/schema.js';
import { readTimers } from '../proc/timers.js';
import { readTaskCreds } from '../proc/creds.js';
import { refuseUnrestorable, refuseOtherUserNs } from '../dump/creds.js';
import { credsImage, helperCreds } from '../restore/creds-check.js';
import { seccompImage } from '../dump/seccomp.js';
import { canSuspendSeccomp } from '../freeze/seccomp-suspend.js';

const SIGKILL = 9;
const MEMBARRIER_CMD_GET_REGISTRATIONS = 1 << 9;
const SIGSTOP = 19;

/**
 * Scratch layout: 64 sigactions, three process-wide words, then per thread
 * a stack_t and its clear-child-tid word.
 */
const SIGACTIONS_AT = 0;
const WORDS_AT = NSIG * KSIGACTION_SIZE;
const ITIMERS_AT = WORDS_AT + 24;
const ITIMERVAL_SIZE = 32;
const THREADS_AT = ITIMERS_AT + 3 * ITIMERVAL_SIZE;
const PER_THREAD = STACK_T_SIZE + 8;

export interface RemoteState {
  threads: ThreadImage[];
  signals: SignalImage;
  prctl: ProcessImage['prctl'];
  brk: number;
  itimers: NonNullable<ProcessImage['itimers']>;
  posixTimers: PosixTimerImage[];
  /** The group stop the process was in when frozen (0: running). */
  groupStop: number;
}

/**
 * Process-wide state is asked of the leader; per-thread state of each
 * thread, all through one scratch mapping (the threads share the mm) and
 * the leader's borrowed syscall instruction.
 */
export function collectRemoteState(proc: FrozenProcess, mem: ProcMem, handScratch?: (s: Scratch) => void): RemoteState {
  const sc = new RemoteSyscaller(proc.leader, mem);
  const callers = proc.tasks.map((t) => (t === proc.leader ? sc : new RemoteSyscaller(t, mem, sc.gadget)));
  // Read from outside first: these need no scratch memory.
  const outside = proc.tasks.map((t) => ({
    xstate: t.xstate(),
    sigmask: t.sigmask(),
    robustList: getRobustList(t.pid),
    rseq: readRseq(t),
    pendingSignals: t.pendingSiginfo(false),
    creds: readTaskCreds(proc.pid, t.pid),
  })).map((o, i) => ({
    ...o,
    // A tsnap under seccomp itself records none: the helper inherits its filters (dump/creds.ts).
    // Strict mode has no filters (the kernel lists them in filter mode only).
    seccompFilters: o.creds.seccomp === 0 || !canSuspendSeccomp() ? null : o.creds.seccomp === SECCOMP_MODE_FILTER ? proc.tasks[i].seccompFilters() : [],
  }));
  const sharedPending = proc.leader.pendingSiginfo(true);
  mark('state: read from outside');
  const timers = readTimers(proc.pid);
  const TIMERS_AT = THREADS_AT + PER_THREAD * proc.tasks.length;
  const AREA_AT = Math.ceil((TIMERS_AT + 32 * timers.length) / 16) * 16;
  // Every call of the leader's batch, at most (the other threads make 3 each).
  const capacity = NSIG + 16 + timers.length;
  const size = AREA_AT + batchAreaSize(capacity);

  return withBatchScratch(sc, size, handScratch, (scratch, executable) => {
    mark('state: scratch mapped');
    const area = executable ? batchArea(proc.pid, scratch + AREA_AT, capacity) : null;
    // Every question to the leader in one batch, then one per other thread.
    const signos: number[] = [];
    const calls: BatchCall[] = [];
    for (let sig = 1; sig <= NSIG; sig++) {
      if (sig === SIGKILL || sig === SIGSTOP) continue;
      calls.push({ name: `rt_sigaction(${sig})`, nr: SYS.rt_sigaction, args: [sig, 0, scratch + SIGACTIONS_AT + (sig - 1) * KSIGACTION_SIZE, 8] });
      signos.push(sig);
    }
    const w = scratch + WORDS_AT;
    const at = (name: string, nr: number, ...args: (number | bigint)[]) => calls.push({ name, nr, args }) - 1;
    at('prctl(PR_GET_PDEATHSIG)', SYS.prctl, PR.GET_PDEATHSIG, w);
    at('prctl(PR_GET_CHILD_SUBREAPER)', SYS.prctl, PR.GET_CHILD_SUBREAPER, w + 8);
    const iDumpable = at('prctl(PR_GET_DUMPABLE)', SYS.prctl, PR.GET_DUMPABLE);
    const iNoNewPrivs = at('prctl(PR_GET_NO_NEW_PRIVS)', SYS.prctl, PR.GET_NO_NEW_PRIVS, 0, 0, 0, 0);
    const iThp = at('prctl(PR_GET_THP_DISABLE)', SYS.prctl, PR.GET_THP_DISABLE, 0, 0, 0, 0);
    // EINVAL on kernels before 6.3: nothing this tsnap could read back anyway.
    const iMembarrier = calls.push({ name: 'membarrier', nr: SYS.membarrier, args: [MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0], raw: true }) - 1;
    // brk(0) cannot fail: it returns the current break.
    const iBrk = calls.push({ name: 'brk', nr: SYS.brk, args: [0], raw: true }) - 1;
    for (let which = 0; which < 3; which++) at(`getitimer(${which})`, SYS.getitimer, which, scratch + ITIMERS_AT + which * ITIMERVAL_SIZE);
    timers.forEach((t, i) => at(`timer_gettime(${t.id})`, SYS.timer_gettime, t.id, scratch + TIMERS_AT + i * 32));
    const perThread = (i: number): BatchCall[] => {
      const a = scratch + THREADS_AT + i * PER_THREAD;
      return [
        { name: 'sigaltstack', nr: SYS.sigaltstack, args: [0, a] },
        { name: 'prctl(PR_GET_TID_ADDRESS)', nr: SYS.prctl, args: [PR.GET_TID_ADDRESS, a + STACK_T_SIZE] },
        { name: 'prctl(PR_GET_SECUREBITS)', nr: SYS.prctl, args: [PR.GET_SECUREBITS, 0, 0, 0, 0] },
      ];
    };
    const leaderAt = proc.tasks.indexOf(proc.leader);
    const leaderThread = calls.length;
    calls.push(...perThread(leaderAt));
    mark('state: batch ready');
    const r = runBatch(sc, calls, area);
    mark('state: batch ran');
    const dumpable = Number(r[iDumpable]);
    const noNewPrivs = Number(r[iNoNewPrivs]);
    const thpDisable = Number(r[iThp]);
    const membarrier = Math.max(0, Number(r[iMembarrier]));
    const brk = Number(r[iBrk]);
    const securebits = callers.map((tsc, i) => Number(i === leaderAt ? r[leaderThread + 2] : runBatch(tsc, perThread(i), area)[2]));
    // Checked again frozen: the early check (checkCreds) could not see
    // securebits, and a running thread may have changed its credentials since.
    const start = helperCreds();
    refuseOtherUserNs(proc.pid);
    proc.tasks.forEach((t, i) => refuseUnrestorable(proc.pid, t.pid, outside[i].creds, securebits[i], start));

    mark('state: creds checked');
    const out = Buffer.alloc(size);
    mem.read(out, 0, out.length, scratch);
    const actions: SigactionImage[] = signos.map((signo) => {
      const o = SIGACTIONS_AT + (signo - 1) * KSIGACTION_SIZE;
      return {
        signo,
        handler: out.readBigUInt64LE(o),
        flags: out.readBigUInt64LE(o + 8),
        restorer: out.readBigUInt64LE(o + 16),
        mask: out.readBigUInt64LE(o + 24),
      };
    });
    const threads = proc.tasks.map((t, i): ThreadImage => {
      const a = THREADS_AT + i * PER_THREAD;
      return {
        tid: t.pid,
        regs: Buffer.from(t.savedRegs),
        xstate: outside[i].xstate,
        sigmask: outside[i].sigmask,
        sigaltstack: { sp: out.readBigUInt64LE(a), flags: out.readInt32LE(a + 8), size: out.readBigUInt64LE(a + 16) },
        syscallRestart: pendingRestart(t.savedRegs),
        clearChildTid: out.readBigUInt64LE(a + STACK_T_SIZE),
        robustList: outside[i].robustList,
        rseq: outside[i].rseq,
        pendingSignals: outside[i].pendingSignals,
        creds: credsImage(outside[i].creds, securebits[i]),
        ...(outside[i].seccompFilters ? { seccomp: seccompImage(proc.pid, t.pid, outside[i].creds.seccomp, outside[i].seccompFilters!) } : {}),
      };
    });
    const us = (o: number) => Number(out.readBigInt64LE(o)) * 1e6 + Number(out.readBigInt64LE(o + 8));
    const itimers = [0, 1, 2]
      .map((which) => ({ which, intervalUs: us(ITIMERS_AT + which * ITIMERVAL_SIZE), valueUs: us(ITIMERS_AT + which * ITIMERVAL_SIZE + 16) }))
      // A periodic ITIMER_REAL whose SIGALRM is pending reads 0 left: the kernel re-arms it only when
      // that signal is taken (dequeue_signal), and a frozen task takes none. Its period is kept.
      .filter((t) => t.valueUs > 0 || t.intervalUs > 0);
    const ns = (o: number) => out.readBigInt64LE(o) * 1_000_000_000n + out.readBigInt64LE(o + 8);
    const posixTimers = timers.map((t, i): PosixTimerImage => ({
      ...t, intervalNs: ns(TIMERS_AT + i * 32), valueNs: ns(TIMERS_AT + i * 32 + 16),
    }));
    return {
      threads,
      itimers,
      posixTimers,
      groupStop: proc.leader.groupStop,
      signals: { actions, sharedPending },
      prctl: {
        dumpable,
        pdeathsig: out.readInt32LE(WORDS_AT),
        childSubreaper: out.readInt32LE(WORDS_AT + 8),
        noNewPrivs,
        thpDisable,
        membarrier,
      },
      brk,
    };
  });
}

/**
 * Scratch that can hold the batch loop's code; a mapping that may not be
 * executable (a W^X policy refusing it) leaves the batches to the guardian.
 */
function withBatchScratch<T>(sc: RemoteSyscaller, size: number, handOver: ((s: Scratch) => void) | undefined, fn: (scratch: number, executable: boolean) => T): T {
  let executable = batching();
  let s;
  try {
    s = sc.openScratch(size, executable ? BATCH_PROT : undefined);
  } catch (err) {
    if (!executable || !(err instanceof SysError) || !['EACCES', 'EPERM'].includes(err.code)) throw err;
    executable = false;
    s = sc.openScratch(size);
  }
  let handed = false;
  try {
    const r = fn(s.addr, executable);
    if (handOver) { handOver(s); handed = true; }
    return r;
  } finally {
    if (!handed) s.close();
  }
}

function readRseq(task: FrozenTask): ThreadImage['rseq'] {
  try {
    return task.rseqConfig();
  } catch (err) {
    // Kernels without CONFIG_RSEQ answer EINVAL/EIO: nothing registered to record.
    if (err instanceof SysError && (err.code === 'EINVAL' || err.code === 'EIO')) return null;
    throw err;
  }
}

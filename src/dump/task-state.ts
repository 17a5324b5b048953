/**
 * The per-thread and per-process state that only the kernel or the task
 * itself can tell: registers, XSAVE area, signal mask and actions, alternate
 * stack, TLS-related addresses. What ptrace or /proc can read from outside
 * is read from outside; the rest through remote syscalls into one scratch
 * mapping.
 */
import {
  getRobustList, SYS, PR, NSIG, KSIGACTION_SIZE, STACK_T_SIZE, SysError,
} from '../sys/index.js';
import { RemoteSyscaller } from '../inject/remote-syscall.js';
import type { FrozenProcess } from '../freeze/frozen-process.js';
import type { ProcMem } from '../sys/memory.js';
import { pendingRestart, type FrozenTask } from '../freeze/frozen-task.js';
import type { ThreadImage, SignalImage, SigactionImage, ProcessImage, PosixTimerImage } from '../../formats/schema.js';
import { readTimers } from '../proc/timers.js';
import { readTaskCreds } from '../proc/creds.js';
import { refuseUnrestorable, refuseOtherUserNs } from './creds.js';
import { credsImage, helperCreds } from '../restore/creds-check.js';

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
export function collectRemoteState(proc: FrozenProcess, mem: ProcMem): RemoteState {
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
  }));
  const sharedPending = proc.leader.pendingSiginfo(true);
  const timers = readTimers(proc.pid);
  const TIMERS_AT = THREADS_AT + PER_THREAD * proc.tasks.length;
  const size = TIMERS_AT + 32 * timers.length;

  return sc.withScratch(size, (scratch) => {
    const signos: number[] = [];
    for (let sig = 1; sig <= NSIG; sig++) {
      if (sig === SIGKILL || sig === SIGSTOP) continue;
      sc.check(`rt_sigaction(${sig})`, SYS.rt_sigaction, sig, 0, scratch + SIGACTIONS_AT + (sig - 1) * KSIGACTION_SIZE, 8);
      signos.push(sig);
    }
    const w = scratch + WORDS_AT;
    sc.check('prctl(PR_GET_PDEATHSIG)', SYS.prctl, PR.GET_PDEATHSIG, w);
    sc.check('prctl(PR_GET_CHILD_SUBREAPER)', SYS.prctl, PR.GET_CHILD_SUBREAPER, w + 8);
    const dumpable = Number(sc.check('prctl(PR_GET_DUMPABLE)', SYS.prctl, PR.GET_DUMPABLE));
    const noNewPrivs = Number(sc.check('prctl(PR_GET_NO_NEW_PRIVS)', SYS.prctl, PR.GET_NO_NEW_PRIVS, 0, 0, 0, 0));
    const thpDisable = Number(sc.check('prctl(PR_GET_THP_DISABLE)', SYS.prctl, PR.GET_THP_DISABLE, 0, 0, 0, 0));
    // EINVAL on kernels before 6.3: nothing this tsnap could read back anyway.
    const membarrier = Math.max(0, Number(sc.call(SYS.membarrier, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0)));
    // brk(0) cannot fail: it returns the current break.
    const brk = Number(sc.call(SYS.brk, 0));
    for (let which = 0; which < 3; which++) sc.check(`getitimer(${which})`, SYS.getitimer, which, scratch + ITIMERS_AT + which * ITIMERVAL_SIZE);
    timers.forEach((t, i) => sc.check(`timer_gettime(${t.id})`, SYS.timer_gettime, t.id, scratch + TIMERS_AT + i * 32));
    const securebits = callers.map((tsc, i) => {
      const at = scratch + THREADS_AT + i * PER_THREAD;
      tsc.check('sigaltstack', SYS.sigaltstack, 0, at);
      tsc.check('prctl(PR_GET_TID_ADDRESS)', SYS.prctl, PR.GET_TID_ADDRESS, at + STACK_T_SIZE);
      return Number(tsc.check('prctl(PR_GET_SECUREBITS)', SYS.prctl, PR.GET_SECUREBITS, 0, 0, 0, 0));
    });
    // Checked again frozen: the early check (checkCreds) could not see
    // securebits, and a running thread may have changed its credentials since.
    const start = helperCreds();
    refuseOtherUserNs(proc.pid);
    proc.tasks.forEach((t, i) => refuseUnrestorable(proc.pid, t.pid, outside[i].creds, securebits[i], start));

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
      };
    });
    const us = (o: number) => Number(out.readBigInt64LE(o)) * 1e6 + Number(out.readBigInt64LE(o + 8));
    const itimers = [0, 1, 2]
      .map((which) => ({ which, intervalUs: us(ITIMERS_AT + which * ITIMERVAL_SIZE), valueUs: us(ITIMERS_AT + which * ITIMERVAL_SIZE + 16) }))
      .filter((t) => t.valueUs > 0);
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

function readRseq(task: FrozenTask): ThreadImage['rseq'] {
  try {
    return task.rseqConfig();
  } catch (err) {
    // Kernels without CONFIG_RSEQ answer EINVAL/EIO: nothing registered to record.
    if (err instanceof SysError && (err.code === 'EINVAL' || err.code === 'EIO')) return null;
    throw err;
  }
}

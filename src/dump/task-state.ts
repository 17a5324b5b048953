/**
 * The per-thread and per-process state that only the kernel or the task
 * itself can tell: registers, XSAVE area, signal mask and actions, alternate
 * stack, TLS-related addresses. What ptrace or /proc can read from outside
 * is read from outside; the rest through remote syscalls into one scratch
 * page.
 */
import {
  ptrace, getRobustList, SYS, PR, NSIG, KSIGACTION_SIZE, STACK_T_SIZE, SysError,
} from '../sys/index.js';
import type { RemoteSyscaller } from '../inject/remote-syscall.js';
import type { ProcMem } from '../sys/memory.js';
import { pendingRestart } from '../freeze/frozen-task.js';
import type { ThreadImage, SignalImage, SigactionImage, ProcessImage } from '../../formats/schema.js';

const SIGKILL = 9;
const SIGSTOP = 19;

/** Scratch layout: 64 sigactions, then stack_t, then five int/ulong slots. */
const SCRATCH = {
  sigactions: 0,
  altstack: NSIG * KSIGACTION_SIZE,
  words: NSIG * KSIGACTION_SIZE + STACK_T_SIZE + 8,
  size: 4096,
};

export interface RemoteState {
  thread: ThreadImage;
  signals: SignalImage;
  prctl: ProcessImage['prctl'];
  brk: number;
}

export function collectRemoteState(sc: RemoteSyscaller, mem: ProcMem): RemoteState {
  const tid = sc.task.pid;
  const regs = sc.task.savedRegs;
  // Read from outside first: these need no scratch memory.
  const xstate = ptrace.getXstate(tid);
  const sigmask = ptrace.getSigmask(tid);
  const robustList = getRobustList(tid);
  const rseq = readRseq(tid);
  const pendingSignals = ptrace.peekSiginfo(tid, false);
  const sharedPending = ptrace.peekSiginfo(tid, true);

  return sc.withScratch(SCRATCH.size, (scratch) => {
    const signos: number[] = [];
    for (let sig = 1; sig <= NSIG; sig++) {
      if (sig === SIGKILL || sig === SIGSTOP) continue;
      sc.check(`rt_sigaction(${sig})`, SYS.rt_sigaction, sig, 0, scratch + SCRATCH.sigactions + (sig - 1) * KSIGACTION_SIZE, 8);
      signos.push(sig);
    }
    sc.check('sigaltstack', SYS.sigaltstack, 0, scratch + SCRATCH.altstack);
    const w = scratch + SCRATCH.words;
    sc.check('prctl(PR_GET_TID_ADDRESS)', SYS.prctl, PR.GET_TID_ADDRESS, w);
    sc.check('prctl(PR_GET_PDEATHSIG)', SYS.prctl, PR.GET_PDEATHSIG, w + 8);
    sc.check('prctl(PR_GET_CHILD_SUBREAPER)', SYS.prctl, PR.GET_CHILD_SUBREAPER, w + 16);
    const dumpable = Number(sc.check('prctl(PR_GET_DUMPABLE)', SYS.prctl, PR.GET_DUMPABLE));
    const noNewPrivs = Number(sc.check('prctl(PR_GET_NO_NEW_PRIVS)', SYS.prctl, PR.GET_NO_NEW_PRIVS, 0, 0, 0, 0));
    const thpDisable = Number(sc.check('prctl(PR_GET_THP_DISABLE)', SYS.prctl, PR.GET_THP_DISABLE, 0, 0, 0, 0));
    // brk(0) cannot fail: it returns the current break.
    const brk = Number(sc.call(SYS.brk, 0));

    const out = Buffer.alloc(SCRATCH.words + 24);
    mem.read(out, 0, out.length, scratch);
    const actions: SigactionImage[] = signos.map((signo) => {
      const o = SCRATCH.sigactions + (signo - 1) * KSIGACTION_SIZE;
      return {
        signo,
        handler: out.readBigUInt64LE(o),
        flags: out.readBigUInt64LE(o + 8),
        restorer: out.readBigUInt64LE(o + 16),
        mask: out.readBigUInt64LE(o + 24),
      };
    });
    const a = SCRATCH.altstack;
    const thread: ThreadImage = {
      tid,
      regs: Buffer.from(regs),
      xstate,
      sigmask,
      sigaltstack: { sp: out.readBigUInt64LE(a), flags: out.readInt32LE(a + 8), size: out.readBigUInt64LE(a + 16) },
      syscallRestart: pendingRestart(regs),
      clearChildTid: out.readBigUInt64LE(SCRATCH.words),
      robustList,
      rseq,
      pendingSignals,
    };
    return {
      thread,
      signals: { actions, sharedPending },
      prctl: {
        dumpable,
        pdeathsig: out.readInt32LE(SCRATCH.words + 8),
        childSubreaper: out.readInt32LE(SCRATCH.words + 16),
        noNewPrivs,
        thpDisable,
      },
      brk,
    };
  });
}

function readRseq(tid: number): ThreadImage['rseq'] {
  try {
    return ptrace.getRseqConfig(tid);
  } catch (err) {
    // Kernels without CONFIG_RSEQ answer EINVAL/EIO: nothing registered to record.
    if (err instanceof SysError && (err.code === 'EINVAL' || err.code === 'EIO')) return null;
    throw err;
  }
}

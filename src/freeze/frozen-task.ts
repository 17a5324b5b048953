/**
 * Holding one task stopped under ptrace, and letting it go exactly as it was.
 *
 * PTRACE_SEIZE + PTRACE_INTERRUPT stops the task without sending it a signal
 * (PTRACE_ATTACH would queue a SIGSTOP the program could observe). The task
 * stops inside the kernel's signal path; if it was in a blocking syscall that
 * syscall has returned -ERESTART* and the kernel restarts it when we let go.
 *
 * After remote syscalls the task sits at a syscall-exit stop instead, where
 * the kernel no longer performs that restart: release() then applies the
 * restart itself (rax = orig_rax, rip -= 2), as the kernel would have.
 *
 * Two kinds of tracer hold a task:
 * - `guarded` (every process tsnap freezes to dump): the native guardian
 *   (sys/guardian.ts) is the tracer and keeps the registers of the freeze,
 *   so a tsnap that dies at any instant leaves the task as it found it;
 * - `direct` (processes restore builds): tsnap itself, with
 *   PTRACE_O_EXITKILL, so a tsnap that dies takes the half-built process
 *   with it.
 */
import { ptrace, SysError, WaitStatus, Guardian, GuardianError, GuardianUnavailable, SIGINFO_SIZE, REG_OFFSET, PTRACE_O, PTRACE_EVENT_STOP, SIGTRAP, SIGKILL, SYS,
  ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK, kill } from '../sys/index.js';
import { readStatus } from '../proc/status.js';
import { readStat, PF_KTHREAD } from '../proc/stat.js';
import { TsnapError } from '../errors.js';
import { canSuspendSeccomp } from './seccomp-suspend.js';

const RESTART_CODES = new Set([ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK]);

export function readReg(regs: Buffer, name: keyof typeof REG_OFFSET): bigint {
  return regs.readBigUInt64LE(REG_OFFSET[name]);
}
export function writeReg(regs: Buffer, name: keyof typeof REG_OFFSET, v: bigint | number): void {
  regs.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v)), REG_OFFSET[name]);
}

/** The syscall the task was stopped in, when the kernel will restart it. */
export function pendingRestart(regs: Buffer): { nr: number; code: number } | null {
  const orig = BigInt.asIntN(64, readReg(regs, 'orig_rax'));
  if (orig < 0n) return null;
  const code = -Number(BigInt.asIntN(64, readReg(regs, 'rax')));
  return RESTART_CODES.has(code) ? { nr: Number(orig), code } : null;
}

/** Registers as the task will see them on resuming from a syscall-exit stop. */
export function applyRestart(regs: Buffer): Buffer {
  const out = Buffer.from(regs);
  const r = pendingRestart(regs);
  if (!r) return out;
  writeReg(out, 'rax', r.code === ERESTART_RESTARTBLOCK ? SYS.restart_syscall : r.nr);
  writeReg(out, 'rip', readReg(regs, 'rip') - 2n);
  writeReg(out, 'orig_rax', -1n);
  return out;
}

export interface FreezeOptions {
  /** How long to wait for the task to stop (a task in uninterruptible sleep stops late). */
  timeoutMs?: number;
  /** Trace it from tsnap itself rather than through the guardian (restore's own helper). */
  direct?: boolean;
  /**
   * In SCHED_FIFO from the freeze to the release (a copy-on-write dump's
   * window, dump/frozen-window.ts); the guardian gives the class back.
   * Guarded tasks only. A function: whether this thread is (those the
   * watchdog of sys/rt-watch.ts lists, which bounds the class).
   */
  raise?: boolean | ((tid: number) => boolean);
}

export type TracerKind = 'guarded' | 'direct';

export class FrozenTask {
  /** Registers as found at the freeze; what release() puts back. */
  readonly savedRegs: Buffer;
  /** Set once a remote syscall moved the task to a syscall stop. */
  atSyscallStop = false;
  /** Signals that arrived while we held the task; re-sent on release. */
  readonly deferredSignals: number[] = [];
  /** The signal of the group stop (SIGSTOP, SIGTSTP...) the task was in when frozen; 0 when it was running. */
  groupStop = 0;
  private released = false;
  readonly freezeUs: number;
  readonly frozenAt: bigint;

  private constructor(readonly pid: number, regs: Buffer, freezeUs: number, readonly tracer: TracerKind) {
    this.savedRegs = regs;
    this.freezeUs = freezeUs;
    this.frozenAt = process.hrtime.bigint();
  }

  static freeze(pid: number, opts: FreezeOptions = {}): FrozenTask {
    const t0 = process.hrtime.bigint();
    const timeoutMs = opts.timeoutMs ?? 10_000;
    if (!opts.direct) {
      let got: { regs: Buffer; stopSignal: number };
      try {
        // The guardian sets SUSPEND_SECCOMP only once the task is stopped.
        got = Guardian.get().freeze(pid, PTRACE_O.TRACESYSGOOD | (canSuspendSeccomp() ? PTRACE_O.SUSPEND_SECCOMP : 0), timeoutMs, typeof opts.raise === 'function' ? opts.raise(pid) : opts.raise === true);
      } catch (err) {
        if (err instanceof GuardianError && err.exited) throw new TsnapError('noSuchProcess', `process ${pid} exited while being frozen`);
        if (err instanceof GuardianError && err.timedOut) throw stopTimeout(pid, timeoutMs);
        throw explainSeizeError(pid, err);
      }
      const task = new FrozenTask(pid, got.regs, Number(process.hrtime.bigint() - t0) / 1000, 'guarded');
      if (got.stopSignal !== SIGTRAP) task.groupStop = got.stopSignal;
      return task;
    }
    try {
      ptrace.seize(pid, PTRACE_O.TRACESYSGOOD);
    } catch (err) {
      throw explainSeizeError(pid, err);
    }
    try {
      ptrace.interrupt(pid);
      const status = waitForStop(pid, timeoutMs, (status) => {
        // A signal-delivery-stop before our trap: let the signal through as
        // it would have gone without us, and keep waiting for the trap.
        if (WaitStatus.event(status) === 0) {
          ptrace.cont(pid, WaitStatus.stopSig(status));
          return false;
        }
        return WaitStatus.event(status) === PTRACE_EVENT_STOP;
      });
      const regs = ptrace.getRegs(pid);
      const task = new FrozenTask(pid, regs, Number(process.hrtime.bigint() - t0) / 1000, 'direct');
      if (WaitStatus.stopSig(status) !== SIGTRAP) task.groupStop = WaitStatus.stopSig(status);
      return task;
    } catch (err) {
      try { ptrace.detach(pid); } catch { /* already gone or never stopped */ }
      throw err;
    }
  }

  /**
   * Takes over a task that is already our tracee and about to stop (a child
   * auto-attached through PTRACE_O_TRACEFORK): waits for its first stop.
   */
  static adopt(pid: number, timeoutMs = 10_000): FrozenTask {
    waitForStop(pid, timeoutMs, (status) => WaitStatus.event(status) === PTRACE_EVENT_STOP);
    return new FrozenTask(pid, ptrace.getRegs(pid), 0, 'direct');
  }

  frozenUs(): number {
    return Number(process.hrtime.bigint() - this.frozenAt) / 1000;
  }

  /** Puts the registers back and lets the task run on as if never stopped. */
  release(): void {
    if (this.released) return;
    this.released = true;
    if (this.tracer === 'guarded') {
      try {
        Guardian.get().release(this.pid);
      } catch (err) {
        if (!(err instanceof GuardianError && (err.code === 'ESRCH' || err.exited))) throw err;
      }
      return;
    }
    try {
      if (this.atSyscallStop) ptrace.setRegs(this.pid, applyRestart(this.savedRegs));
      else ptrace.setRegs(this.pid, this.savedRegs);
      ptrace.detach(this.pid);
    } catch (err) {
      if (!(err instanceof SysError && err.code === 'ESRCH')) throw err;
    }
    for (const sig of this.deferredSignals) {
      try { kill(this.pid, sig); } catch { /* gone */ }
    }
  }

  /** Ends the task (the default after a dump). */
  kill(): void {
    if (this.released) return;
    this.released = true;
    if (this.tracer === 'guarded') {
      Guardian.get().kill(this.pid, [this.pid]);
      return;
    }
    try { kill(this.pid, SIGKILL); } catch { /* gone */ }
    try {
      // Reap the ptrace notification of its death so it does not linger as
      // our tracee; the real parent still gets its exit status.
      for (;;) {
        const w = ptrace.waitpidBlocking(this.pid);
        if (WaitStatus.exited(w.status) || WaitStatus.signaled(w.status)) break;
      }
    } catch { /* ECHILD: already reaped */ }
  }

  /** The full XSAVE area (x87, SSE, AVX, AVX-512, PKRU...) as the kernel lays it out. */
  xstate(): Buffer {
    return this.tracer === 'guarded' ? Guardian.get().getXstate(this.pid) : ptrace.getXstate(this.pid);
  }

  sigmask(): bigint {
    return this.tracer === 'guarded' ? Guardian.get().getSigmask(this.pid) : ptrace.getSigmask(this.pid);
  }

  /** Queued siginfo records (128 bytes each) of the thread or, with shared, the process. */
  pendingSiginfo(shared: boolean): Buffer[] {
    if (this.tracer === 'direct') return ptrace.peekSiginfo(this.pid, shared);
    const all = Guardian.get().peekSiginfo(this.pid, shared);
    const out: Buffer[] = [];
    for (let o = 0; o + SIGINFO_SIZE <= all.length; o += SIGINFO_SIZE) out.push(all.subarray(o, o + SIGINFO_SIZE));
    return out;
  }

  /** The rseq area the thread registered (glibc registers one for every thread). */
  rseqConfig(): ptrace.RseqConfig | null {
    return this.tracer === 'guarded' ? ptrace.parseRseqConfig(Guardian.get().getRseq(this.pid)) : ptrace.getRseqConfig(this.pid);
  }

  /**
   * The thread's seccomp filters, oldest first (the order to install them
   * in: the kernel counts from the oldest); empty when it has none.
   */
  seccompFilters(): ptrace.SeccompFilter[] {
    const out: ptrace.SeccompFilter[] = [];
    for (let i = 0; ; i++) {
      const f = this.tracer === 'guarded' ? Guardian.get().seccompFilter(this.pid, i) : ptrace.getSeccompFilter(this.pid, i);
      if (!f) return out;
      out.push(f);
    }
  }

  get isReleased(): boolean {
    return this.released;
  }

  /** The task was ended by its process's kill: nothing left to put back. */
  markReleased(): void {
    this.released = true;
  }
}

/**
 * Waits until `accept(status)` says the stop is the one we want. Exits of
 * the task and time-outs become TsnapErrors.
 */
export function waitForStop(pid: number, timeoutMs: number, accept: (status: number) => boolean): number {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const w = ptrace.waitpidTimeout(pid, Math.max(0, deadline - Date.now()));
    if (!w) throw stopTimeout(pid, timeoutMs);
    if (WaitStatus.exited(w.status) || WaitStatus.signaled(w.status)) {
      throw new TsnapError('noSuchProcess', `process ${pid} exited while being frozen`);
    }
    if (WaitStatus.stopped(w.status) && accept(w.status)) return w.status;
  }
}

function stopTimeout(pid: number, timeoutMs: number): TsnapError {
  return new TsnapError('targetFailed', `process ${pid} did not stop within ${timeoutMs} ms (uninterruptible sleep?); try again later`);
}

function explainSeizeError(pid: number, err: unknown): unknown {
  if (err instanceof GuardianUnavailable) return new TsnapError('internal', err.message, err);
  if (!(err instanceof SysError)) return err;
  if (err.code === 'ESRCH') return new TsnapError('noSuchProcess', `no process with pid ${pid}; check the pid (ps -p ${pid})`, err);
  if (err.code === 'EPERM') {
    let tracer = 0;
    try { tracer = readStatus(pid).tracerPid; } catch { /* gone */ }
    if (tracer) {
      return new TsnapError('permission', `process ${pid} is already traced by pid ${tracer} (a debugger or another tsnap); detach it first`, err);
    }
    let kthread = false;
    try { kthread = (readStat(pid).flags & PF_KTHREAD) !== 0; } catch { /* gone */ }
    if (kthread) return new TsnapError('unsupported', `process ${pid} is a kernel thread; tsnap dumps user processes only`, err);
    return new TsnapError('permission', `not allowed to ptrace process ${pid}; run tsnap as root or as its owner (see /proc/sys/kernel/yama/ptrace_scope)`, err);
  }
  return err;
}

export { SIGTRAP };

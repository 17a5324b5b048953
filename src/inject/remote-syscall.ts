/**
 * Running syscalls inside a frozen task, without changing a byte of its code.
 *
 * The task needs to execute a `syscall` instruction with our arguments in its
 * registers. Rather than writing one over its code (which would copy-on-write
 * a text page for good, and corrupt the program if tsnap died mid-way), we
 * point rip at a `syscall` instruction that already exists: the one the task
 * is stopped in (rip - 2), or one inside the vdso. PTRACE_SYSCALL stops the
 * task at the syscall's entry and again at its exit, before it could execute
 * anything after the instruction; there we read the result.
 *
 * Scratch memory for syscalls with pointer arguments is an anonymous mapping
 * made and removed by the same mechanism.
 *
 * For a guarded task (one frozen to dump) the guardian runs each syscall
 * whole, and anything a syscall leaves in the task (the scratch mapping, an
 * injected fd) is registered with it as an undo: should tsnap die before it
 * removes that thing itself, the guardian does, before it lets the task go.
 */
import {
  ptrace, SysError, WaitStatus, ProcMem, SYS, SIGTRAP, Guardian, GuardianError, type SyscallUndo,
  PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS,
} from '../sys/index.js';
import { FrozenTask, readReg, writeReg, waitForStop, pendingRestart } from '../freeze/frozen-task.js';
import { readMaps } from '../proc/maps.js';
import { TsnapError } from '../errors.js';
import { faultPoint } from '../fault-points.js';
import { PAGE_SIZE } from '../sys/uapi.js';

const SYSCALL_STOP = SIGTRAP | 0x80;
const ARG_REGS = ['rdi', 'rsi', 'rdx', 'r10', 'r8', 'r9'] as const;

/** Memory mapped in a task for tsnap's own use, until close(). */
export interface Scratch {
  addr: number;
  end: number;
  close(): void;
}

export class RemoteSyscaller {
  /** Address of the `syscall` instruction the task executes; movable (restore maps its own). */
  gadget: number;
  /**
   * The gadget is followed by an int3 (restore's stub): a call is then one
   * stop (PTRACE_CONT to the trap) instead of two (syscall entry and exit),
   * one wake-up of the task fewer per call, which on a busy machine is most
   * of a remote syscall's cost.
   */
  trapAfter = false;

  /** `gadget`: a syscall instruction already found in the same address space (another thread's). */
  constructor(readonly task: FrozenTask, readonly mem: ProcMem, gadget?: number) {
    this.gadget = gadget ?? findSyscallInstruction(task, mem);
  }

  /** Raw result: a negative value is -errno. */
  call(nr: number, ...args: (number | bigint)[]): bigint {
    if (this.task.tracer === 'guarded') return this.guarded(nr, args, null, 0n).ret;
    this.begin(nr, ...args);
    return this.end();
  }

  /**
   * A syscall that leaves something in the task, with the syscall that
   * removes it (`undo`, the result going to argument `resultSlot`). Returns
   * the raw result and a token for callUndoing().
   */
  callLeaving(nr: number, args: (number | bigint)[], undo: SyscallUndo): { ret: bigint; token: bigint } {
    if (this.task.tracer === 'direct') return { ret: this.call(nr, ...args), token: 0n };
    const r = this.guarded(nr, args, undo, 0n);
    return { ret: r.ret, token: r.undoId };
  }

  /** The syscall that removes what callLeaving() left; `token` is its answer. */
  callUndoing(token: bigint, nr: number, ...args: (number | bigint)[]): bigint {
    if (this.task.tracer === 'direct') return this.call(nr, ...args);
    return this.guarded(nr, args, null, token).ret;
  }

  private guarded(nr: number, args: (number | bigint)[], undo: SyscallUndo | null, cancels: bigint): { ret: bigint; undoId: bigint } {
    this.task.atSyscallStop = true;
    try {
      return Guardian.get().syscall(this.task.pid, this.gadget, nr, args, undo, cancels);
    } catch (err) {
      if (err instanceof GuardianError && err.exited) throw new TsnapError('targetFailed', `process ${this.task.pid} exited during a remote syscall`);
      throw err;
    }
  }

  private running = false;
  /** The running call ends at the int3 (trapAfter), not at its syscall exit. */
  private trapping = false;

  /**
   * Starts a syscall and returns while the task executes it on its own CPU;
   * end() waits for the result. Lets tsnap overlap its own work with a long
   * syscall of the task (populating memory during restore).
   */
  begin(nr: number, ...args: (number | bigint)[]): void {
    if (this.running) throw new Error('a remote syscall is already running');
    if (this.task.tracer === 'guarded') throw new Error('begin()/end() are for tasks restore traces itself');
    const { pid } = this.task;
    const regs = Buffer.from(this.task.savedRegs);
    writeReg(regs, 'rax', nr);
    writeReg(regs, 'orig_rax', -1n);
    writeReg(regs, 'rip', this.gadget);
    ARG_REGS.forEach((r, i) => writeReg(regs, r, args[i] ?? 0));
    ptrace.setRegs(pid, regs);
    this.task.atSyscallStop = true;
    // An munmap of the stub itself never gets back to the int3: stopped at the syscall's exit.
    this.trapping = this.trapAfter && !(nr === SYS.munmap && covers(args, this.gadget));
    if (this.trapping) {
      ptrace.cont(pid, 0); // the syscall, then the int3: end()'s stop
    } else {
      this.stepToSyscallStop(); // entry
      ptrace.syscallStep(pid, 0); // run the syscall; the exit stop is end()'s
    }
    this.running = true;
  }

  /** end() without blocking: null while the task is still in the syscall. */
  poll(): bigint | null {
    if (!this.running) throw new Error('no remote syscall is running');
    const w = ptrace.waitpidNoHang(this.task.pid);
    if (!w) return null;
    if (!WaitStatus.stopped(w.status)) throw new TsnapError('targetFailed', `process ${this.task.pid} exited during a remote syscall`);
    if (this.trapping) {
      const after = this.atTrap(w.status);
      if (!after) return null;
      this.running = false;
      return BigInt.asIntN(64, readReg(after, 'rax'));
    }
    if (WaitStatus.stopSig(w.status) !== SYSCALL_STOP) {
      if (WaitStatus.event(w.status) === 0) this.task.deferredSignals.push(WaitStatus.stopSig(w.status));
      ptrace.syscallStep(this.task.pid, 0);
      return null;
    }
    this.running = false;
    return BigInt.asIntN(64, readReg(ptrace.getRegs(this.task.pid), 'rax'));
  }

  end(): bigint {
    if (!this.running) throw new Error('no remote syscall is running');
    this.running = false;
    if (this.trapping) {
      let after: Buffer | null = null;
      waitForStop(this.task.pid, 60_000, (status) => (after = this.atTrap(status)) !== null);
      return BigInt.asIntN(64, readReg(after!, 'rax'));
    }
    this.waitSyscallStop();
    const after = ptrace.getRegs(this.task.pid);
    return BigInt.asIntN(64, readReg(after, 'rax'));
  }

  /**
   * Trap mode: the registers at a stop that is the int3 after the gadget;
   * any other stop (a clone event, a signal, held back until restore lets
   * go) continues the task and gives null.
   */
  private atTrap(status: number): Buffer | null {
    const { pid } = this.task;
    const sig = WaitStatus.stopSig(status);
    if (WaitStatus.event(status) === 0 && sig === SIGTRAP) {
      const regs = ptrace.getRegs(pid);
      if (readReg(regs, 'rip') === BigInt(this.gadget + 3)) return regs;
    } else if (WaitStatus.event(status) === 0) {
      this.task.deferredSignals.push(sig);
    }
    ptrace.cont(pid, 0);
    return null;
  }

  /** Like call(), throwing SysError for an error return. */
  check(name: string, nr: number, ...args: (number | bigint)[]): bigint {
    return this.checked(name, this.call(nr, ...args));
  }

  /** Throws SysError for a raw result that is an error. */
  checked(name: string, r: bigint): bigint {
    if (r < 0n && r > -4096n) throw new SysError(`remote ${name} in ${this.task.pid}`, Number(-r));
    return r;
  }

  /**
   * Runs `fn` with `size` bytes of scratch memory mapped in the task and
   * removes the mapping afterwards, also when `fn` throws.
   */
  withScratch<T>(size: number, fn: (addr: number) => T, prot = PROT_READ | PROT_WRITE): T {
    const s = this.openScratch(size, prot);
    try {
      return fn(s.addr);
    } finally {
      s.close();
    }
  }

  /**
   * Scratch memory mapped in the task until close() (once). Should tsnap
   * die first, the guardian unmaps it.
   */
  openScratch(size: number, prot = PROT_READ | PROT_WRITE): Scratch {
    const len = Math.ceil(size / PAGE_SIZE) * PAGE_SIZE;
    const made = this.callLeaving(SYS.mmap, [0, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1n, 0],
      { nr: SYS.munmap, args: [0, len], resultSlot: 0 });
    const addr = Number(this.checked('mmap', made.ret));
    faultPoint('scratch-mapped');
    let open = true;
    return {
      addr,
      end: addr + len,
      close: () => {
        if (!open) return;
        open = false;
        this.checked('munmap', this.callUndoing(made.token, SYS.munmap, addr, len));
      },
    };
  }

  private stepToSyscallStop(): void {
    ptrace.syscallStep(this.task.pid, 0);
    this.waitSyscallStop();
  }

  private waitSyscallStop(): void {
    const { pid } = this.task;
    waitForStop(pid, 60_000, (status) => {
      const sig = WaitStatus.stopSig(status);
      if (sig === SYSCALL_STOP) return true;
      if (WaitStatus.event(status) !== 0) {
        // A group stop, a late trap, or a fork/clone event of a syscall we
        // run (clone3 during restore): step on to the syscall stop.
        ptrace.syscallStep(pid, 0);
        return false;
      }
      // A signal arrived for the task: hold it back until we let go.
      this.task.deferredSignals.push(sig);
      ptrace.syscallStep(pid, 0);
      return false;
    });
  }
}

function covers(args: readonly (number | bigint)[], at: number): boolean {
  const start = Number(args[0] ?? 0);
  return start <= at && at < start + Number(args[1] ?? 0);
}

/** Address of bytes 0f 05 (syscall) the task can execute. */
function findSyscallInstruction(task: FrozenTask, mem: ProcMem): number {
  const regs = task.savedRegs;
  if (pendingRestart(regs) || BigInt.asIntN(64, readReg(regs, 'orig_rax')) >= 0n) {
    const at = Number(readReg(regs, 'rip')) - 2;
    const b = Buffer.alloc(2);
    try {
      mem.read(b, 0, 2, at);
      if (b[0] === 0x0f && b[1] === 0x05) return at;
    } catch { /* fall through to the vdso */ }
  }
  const vdso = readMaps(task.pid).find((v) => v.path === '[vdso]');
  if (vdso) {
    const code = Buffer.alloc(vdso.end - vdso.start);
    mem.read(code, 0, code.length, vdso.start);
    for (let i = 0; i + 1 < code.length; i++) {
      if (code[i] === 0x0f && code[i + 1] === 0x05) return vdso.start + i;
    }
  }
  throw new TsnapError('unsupported', `process ${task.pid}: no syscall instruction to borrow (no vdso and not stopped in a syscall)`);
}

/**
 * Creating the process to restore. tsnap starts the helper (helperElf() of inject/tiny-elf.ts)
 * with the stdio the restored process should have, seizes it with
 * PTRACE_O_TRACEFORK, and makes it call clone3() with set_tid = the original
 * PID and CLONE_PARENT (so tsnap, not the helper, is the parent and can wait
 * for it). The clone starts as our tracee, stopped before its first
 * instruction; the helper is then killed.
 *
 * Should tsnap die at any instant, nothing it started here lives on: the
 * helper dies with it (PR_SET_PDEATHSIG, see tiny-elf.ts, then
 * PTRACE_O_EXITKILL once seized), and the clone, auto-attached through
 * PTRACE_O_TRACEFORK, inherits the helper's EXITKILL from its first
 * instruction.
 */
import type { StdioOptions } from 'node:child_process';
import { readFileSync, openSync, closeSync } from 'node:fs';
import { ProcMem, SYS, CLONE_PARENT, CLONE_ARGS_SIZE, PTRACE_O, PTRACE_O_TRACEFORK, PTRACE_O_TRACECLONE, ptrace, SysError, posixSpawnAsync, kill, SIGKILL, type SpawnSched } from '../sys/index.js';
import { reapTraced } from '../freeze/frozen-process.js';
import { FrozenTask, readReg } from '../freeze/frozen-task.js';
import { RemoteSyscaller } from '../inject/remote-syscall.js';
import { loadProgram, helperElf, HELPER_NAME } from '../inject/tiny-elf.js';
import { readComm } from '../proc/index.js';
import { TsnapError } from '../errors.js';
import { pausePoint } from '../fault-points.js';
import { mark } from '../trace.js';
import { MASK_WHILE_HELD } from '../state/held-signals.js';

export interface NewProcess {
  task: FrozenTask;
  sc: RemoteSyscaller;
  mem: ProcMem;
  pid: number;
}

async function waitForPause(pid: number): Promise<void> {
  // The helper is ready once it sleeps in pause(); a few ms at most. The
  // first looks come at the next turns of the event loop, not 2 ms apart:
  // by the time restore awaits the helper it is mostly there, and a 2 ms
  // timer was then most of the wait (bench/lazy-steps.ts).
  for (let i = 0; i < 520; i++) {
    try {
      if (readFileSync(`/proc/${pid}/syscall`, 'utf8').startsWith('34 ')) return;
    } catch { /* not yet */ }
    await new Promise((r) => (i < 20 ? setImmediate(r) : setTimeout(r, 2)));
  }
  throw new TsnapError('internal', 'the restore helper did not start');
}

/** The restore helper: kill() ends it and reaps it (it is tsnap's child, not Node's). */
export interface Helper {
  readonly pid: number;
  kill(signal?: string): void;
}

/**
 * posix_spawn (FFI) rather than Node's spawn: Node forks all of tsnap to
 * start a child (page tables of its heap copied: 10-60 ms measured here),
 * glibc's posix_spawn uses CLONE_VM | CLONE_VFORK (under a millisecond), on
 * the critical path of every restore. It runs on libuv's pool
 * (posixSpawnAsync): CLONE_VFORK holds the calling thread until the child
 * has exec'd, a wait for the scheduler (3-30 ms on a loaded machine) that
 * tsnap's thread spends reading the image instead (early-start.ts).
 */
async function spawnHelper(path: string, stdio: StdioOptions, sched?: SpawnSched): Promise<Helper> {
  const list = typeof stdio === 'string' ? [stdio, stdio, stdio] : stdio;
  const opened: number[] = [];
  let pid: number;
  try {
    const fds = [0, 1, 2].map((i) => {
      const s = list[i];
      if (typeof s === 'number') return s;
      if (s === undefined || s === null || s === 'inherit') return i;
      const fd = openSync('/dev/null', 'r+');
      opened.push(fd);
      return fd;
    });
    pid = await posixSpawnAsync(path, [], fds, false, sched);
  } finally {
    for (const fd of opened) closeSync(fd);
  }
  return {
    pid,
    kill: () => {
      try { kill(pid, SIGKILL); } catch { /* gone */ }
      reapTraced(pid);
    },
  };
}

/**
 * `abandoned`: asked once the helper is up; true ends it there, before any clone (early-start.ts).
 * `sched`: the helper's scheduling class from its first instruction (restore --lazy: restore.ts).
 */
export async function createProcess(pid: number | null, stdio: StdioOptions, abandoned?: () => boolean, sched?: SpawnSched): Promise<{ proc: NewProcess; helper: Helper }> {
  const file = loadProgram(HELPER_NAME, helperElf());
  let helper: Helper;
  try {
    pausePoint('restore-program-loaded');
    // Returns once the helper is exec'd (vfork semantics): the program's fd may go.
    helper = await spawnHelper(file.path, stdio, sched);
  } finally {
    file.remove();
  }
  const hpid = helper.pid;
  try {
    pausePoint('restore-helper-spawned');
    await waitForPause(hpid);
    if (abandoned?.()) throw new TsnapError('internal', 'the restore no longer needs its helper');
    mark('restore: helper in pause(): seize and clone');
    const htask = FrozenTask.freeze(hpid, { direct: true });
    pausePoint('restore-helper-seized');
    ptrace.setOptions(hpid, PTRACE_O.TRACESYSGOOD | PTRACE_O.EXITKILL | PTRACE_O_TRACEFORK | PTRACE_O_TRACECLONE);
    // The clone inherits it: a signal sent to the pid from the instant it exists waits in the kernel's
    // queue until the restored process resumes with its own mask (restore.ts sets it with the registers).
    ptrace.setSigmask(hpid, MASK_WHILE_HELD);
    const hmem = new ProcMem(hpid, true);
    const hsc = new RemoteSyscaller(htask, hmem);
    let childPid: number;
    try {
      childPid = cloneInHelper(hsc, pid);
    } finally {
      hmem.close();
    }
    const task = FrozenTask.adopt(childPid);
    pausePoint('restore-cloned');
    // Should tsnap die mid-restore, the kernel kills the half-built process.
    ptrace.setOptions(childPid, PTRACE_O.TRACESYSGOOD | PTRACE_O.EXITKILL);
    const mem = new ProcMem(childPid, true);
    const sc = new RemoteSyscaller(task, mem);
    return { proc: { task, sc, mem, pid: childPid }, helper };
  } catch (err) {
    helper.kill('SIGKILL');
    throw err;
  }
}

function cloneInHelper(hsc: RemoteSyscaller, pid: number | null): number {
  // The clone_args go on the helper's own stack, below the red zone: its
  // pause() loop never touches the stack, and a scratch mapping would cost
  // two remote syscalls (four stops) more on every restore's critical path.
  const sp = Number(readReg(hsc.task.savedRegs, 'rsp'));
  const scratch = sp - 512 - (sp % 64);
  // exit_signal is ignored with CLONE_PARENT: the clone inherits the helper's (SIGCHLD).
  return cloneIn(hsc, scratch, CLONE_PARENT, 0, pid, 'clone3');
}

/**
 * clone3 run by the task behind `sc`, its clone_args (and the set_tid
 * array right after them) written at `scratch`. `tid`: the pid or tid the
 * clone must get, or null for any; when it is taken the error says by whom.
 */
export function cloneIn(sc: RemoteSyscaller, scratch: number, flags: number, exitSignal: number, tid: number | null, what: string): number {
  const args = Buffer.alloc(CLONE_ARGS_SIZE + 8);
  args.writeBigUInt64LE(BigInt(flags), 0);
  args.writeBigUInt64LE(BigInt(exitSignal), 32);
  if (tid !== null) {
    args.writeBigUInt64LE(BigInt(scratch + CLONE_ARGS_SIZE), 64); // set_tid
    args.writeBigUInt64LE(1n, 72); // set_tid_size
    args.writeUInt32LE(tid, CLONE_ARGS_SIZE);
  }
  sc.mem.write(args, 0, args.length, scratch);
  try {
    return Number(sc.check(what, SYS.clone3, scratch, CLONE_ARGS_SIZE));
  } catch (err) {
    if (err instanceof SysError && err.code === 'EEXIST' && tid !== null) throw pidTaken(tid);
    throw err;
  }
}

export function pidTaken(pid: number): TsnapError {
  let who = 'another process';
  try { who = `"${readComm(pid)}"`; } catch { /* gone meanwhile */ }
  return new TsnapError('pidTaken', `pid ${pid} is in use by ${who} (pid ${pid}); stop it, or restore under a new pid with --new-pid`);
}

/**
 * Many remote syscalls with few round trips. A dump's state collection asks
 * a frozen task some 80 questions (rt_sigaction for every signal, prctls,
 * timers). One at a time, each costs a guardian request and two ptrace
 * stops of the task, each stop a wake-up the scheduler may delay by
 * milliseconds on a loaded machine: the stops, not the syscalls, made
 * that part of the frozen time.
 *
 * Two ways, best first:
 * - a loop of syscalls over a table, as code in an executable scratch
 *   mapping of the task (BatchArea): one guardian request, one resume and
 *   one stop (an int3) for the whole list;
 * - the guardian runs the list itself (OP_SYSCALLS): one request, still two
 *   stops per call. For a scratch mapping that cannot be executable.
 * Only calls that leave nothing in the task belong here: what must be
 * undone if tsnap dies goes through callLeaving().
 *
 * A task traced directly (restore) runs the list one call at a time.
 *
 * Why not remote-batch.ts (restore's batches), which also runs a table of
 * syscalls in the task: restore's calls build the task, each counting on
 * the ones before, so its runner stops at the first failure and returns
 * that one result; its task is traced by tsnap itself, and its runner sits
 * in the restore stub. Here the calls are questions: every one runs and
 * every result comes back (an error is often the answer, `raw`); the task
 * is traced by the guardian, so that a SIGKILLed tsnap still lets it go,
 * and only the guardian can resume it and catch the int3 (Guardian.run);
 * the loop goes into a scratch mapping made in a task that has no tsnap
 * code. The record format and its encoding are shared (syscall-record.ts).
 */
import { Guardian, GuardianError, GUARDIAN_MAX_BATCH, SysError, PROT_READ, PROT_WRITE, PROT_EXEC, VmCopier } from '../sys/index.js';
import { TsnapError } from '../errors.js';
import type { RemoteSyscaller } from './remote-syscall.js';
import { SYSCALL_RECORD_SIZE, isErrorReturn, writeSyscallArg } from './syscall-record.js';

export interface BatchCall {
  /** For error messages: "rt_sigaction(2)". */
  name: string;
  nr: number;
  args: (number | bigint)[];
  /** An error return is an answer (the caller looks at it), not a failure. */
  raw?: boolean;
}

/**
 * rbx: the table (64 bytes per call: nr, six arguments, the result), r12:
 * how many. Per entry: load, syscall, store rax, next; then int3.
 */
const LOOP = Buffer.from([
  0x48, 0x8b, 0x03, //             mov rax, [rbx]
  0x48, 0x8b, 0x7b, 0x08, //       mov rdi, [rbx+8]
  0x48, 0x8b, 0x73, 0x10, //       mov rsi, [rbx+16]
  0x48, 0x8b, 0x53, 0x18, //       mov rdx, [rbx+24]
  0x4c, 0x8b, 0x53, 0x20, //       mov r10, [rbx+32]
  0x4c, 0x8b, 0x43, 0x28, //       mov r8, [rbx+40]
  0x4c, 0x8b, 0x4b, 0x30, //       mov r9, [rbx+48]
  0x0f, 0x05, //                   syscall
  0x48, 0x89, 0x43, 0x38, //       mov [rbx+56], rax
  0x48, 0x83, 0xc3, 0x40, //       add rbx, 64
  0x49, 0xff, 0xcc, //             dec r12
  0x75, 0xd6, //                   jnz loop
  0xcc, //                         int3
]);
const ENTRY_SIZE = SYSCALL_RECORD_SIZE;

/** Off with TSNAP_FROZEN_BASELINE=1 (bench/frozen.ts measures against one request per syscall). */
export const batching = (): boolean => process.env.TSNAP_FROZEN_BASELINE !== '1';

/** Where in an executable scratch mapping the loop and the tables go. */
export interface BatchArea {
  mem: VmCopier;
  /** The loop's address (LOOP written there by batchArea()). */
  code: number;
  /** Table space: `calls` entries from `table`. */
  table: number;
  calls: number;
}

/** Bytes of scratch a BatchArea for `calls` calls takes (place it at a 16-byte aligned offset). */
export function batchAreaSize(calls: number): number {
  return LOOP.length + 16 + calls * ENTRY_SIZE;
}

/** Prot for a scratch mapping that holds a BatchArea. */
export const BATCH_PROT = PROT_READ | PROT_WRITE | PROT_EXEC;

export function batchArea(pid: number, at: number, calls: number): BatchArea {
  const mem = new VmCopier(pid);
  writeAll(mem, LOOP, at);
  const table = at + Math.ceil((LOOP.length) / 16) * 16;
  return { mem, code: at, table, calls };
}

/**
 * The raw result of each call, in order; a failed call that is not `raw`
 * throws SysError. `area`: an executable scratch area of this task's mm
 * (null: none could be made).
 */
export function runBatch(sc: RemoteSyscaller, calls: readonly BatchCall[], area: BatchArea | null = null): bigint[] {
  let rets: bigint[];
  if (sc.task.tracer === 'guarded' && batching() && calls.length > 0) {
    try {
      rets = area && calls.length <= area.calls ? runLoop(sc, calls, area) : runInGuardian(sc, calls);
    } catch (err) {
      if (err instanceof GuardianError && err.exited) throw new TsnapError('targetFailed', `process ${sc.task.pid} exited during a remote syscall`);
      throw err;
    }
  } else {
    rets = calls.map((c) => sc.call(c.nr, ...c.args));
  }
  calls.forEach((c, i) => {
    if (!c.raw && isErrorReturn(rets[i])) throw new SysError(`remote ${c.name} in ${sc.task.pid}`, Number(-rets[i]));
  });
  return rets;
}

function runInGuardian(sc: RemoteSyscaller, calls: readonly BatchCall[]): bigint[] {
  // The guardian leaves the task at a syscall-exit stop, as for one call.
  sc.task.atSyscallStop = true;
  const rets: bigint[] = [];
  for (let i = 0; i < calls.length; i += GUARDIAN_MAX_BATCH) {
    rets.push(...Guardian.get().syscalls(sc.task.pid, sc.gadget, calls.slice(i, i + GUARDIAN_MAX_BATCH)));
  }
  return rets;
}

function runLoop(sc: RemoteSyscaller, calls: readonly BatchCall[], area: BatchArea): bigint[] {
  const table = Buffer.alloc(calls.length * ENTRY_SIZE);
  calls.forEach((c, i) => {
    const o = i * ENTRY_SIZE;
    table.writeBigInt64LE(BigInt(c.nr), o);
    for (let k = 0; k < 6; k++) writeSyscallArg(table, o + 8 + k * 8, c.args[k] ?? 0);
    // A call the loop never reached reads as a failure, not as success.
    table.writeBigInt64LE(-4095n, o + 56);
  });
  writeAll(area.mem, table, area.table);
  sc.task.atSyscallStop = true;
  Guardian.get().run(sc.task.pid, area.code, area.table, calls.length, { start: area.code, end: area.code + LOOP.length });
  Guardian.counts.syscalls += calls.length;
  if (area.mem.readv(table, 0, [{ addr: area.table, len: table.length }]) !== table.length) throw new SysError(`process_vm_readv(${sc.task.pid}) of the batch results`, 14);
  return calls.map((_, i) => table.readBigInt64LE(i * ENTRY_SIZE + 56));
}

function writeAll(mem: VmCopier, buf: Buffer, addr: number): void {
  if (mem.writev(buf, 0, [{ addr, len: buf.length }]) !== buf.length) throw new SysError(`process_vm_writev(${mem.pid}) of a syscall batch`, 14);
}

/**
 * Many syscalls in a task under construction for the cost of one ptrace
 * round trip. Each remote syscall costs a setregs, two stops and a getregs
 * (~100 µs here); an address space of 10 000 VMAs needs 10 000+ of them.
 * Instead the calls are written as records into the restore stub, and a
 * tiny position-independent runner placed in the stub's code page executes
 * them one after the other inside the task, stops at the first result that
 * is an error (or not the one expected) and traps back with int3, saying
 * how far it got.
 *
 * Record (64 bytes, little-endian):
 *   u32 nr, u32 flags (bit 0: the result must equal `expect`; otherwise it
 *   must not be an error), u64 args[6], u64 expect.
 * Runner entry: rdi = first record, rsi = count. At the int3: rax = index
 * of the first failed record (count when all succeeded), rdx = its raw
 * result.
 *
 * Tasks without a batch area (one not built from the stub) run the same
 * list one remote syscall at a time, with the same checks and errors.
 *
 * Why not syscall-batch.ts (a dump's batches), which also runs a table of
 * syscalls in the task: that one answers questions, so it runs every call
 * and returns every result (an error is often the answer), its task is
 * traced by the guardian (which must resume it and catch the int3), and
 * its loop is written into a scratch mapping made for the occasion. Here
 * the calls build the task, each one counting on those before it, so the
 * runner stops at the first failure; tsnap traces the task itself and the
 * runner sits in the stub. The record format and its encoding are shared
 * (syscall-record.ts).
 */
import { ptrace, WaitStatus, SIGTRAP } from '../sys/index.js';
import { readReg, writeReg, waitForStop } from '../freeze/frozen-task.js';
import { TsnapError } from '../errors.js';
import type { RemoteTask } from './remote-task.js';
import { SYSCALL_RECORD_SIZE, isErrorReturn, writeSyscallArg } from './syscall-record.js';

export const BATCH_RECORD = SYSCALL_RECORD_SIZE;
const EXACT = 1;

// Assembled from (intel syntax):
//     mov r12, rdi; mov r13, rsi; xor r14d, r14d; xor r15d, r15d
//   next: cmp r14, r13; jae out
//     mov eax, [r12]; mov rdi..r9, [r12+8..48]; syscall; mov r15, rax
//     test byte [r12+4], 1; jnz exact
//     cmp rax, -4095; jae out; jmp ok
//   exact: cmp rax, [r12+56]; jne out
//   ok: add r12, 64; inc r14; jmp next
//   out: mov rax, r14; mov rdx, r15; int3
export const BATCH_RUNNER = Buffer.from([
  0x49, 0x89, 0xfc, 0x49, 0x89, 0xf5, 0x45, 0x31, 0xf6, 0x45, 0x31, 0xff,
  0x4d, 0x39, 0xee, 0x73, 0x49,
  0x41, 0x8b, 0x04, 0x24,
  0x49, 0x8b, 0x7c, 0x24, 0x08, 0x49, 0x8b, 0x74, 0x24, 0x10, 0x49, 0x8b, 0x54, 0x24, 0x18,
  0x4d, 0x8b, 0x54, 0x24, 0x20, 0x4d, 0x8b, 0x44, 0x24, 0x28, 0x4d, 0x8b, 0x4c, 0x24, 0x30,
  0x0f, 0x05, 0x49, 0x89, 0xc7,
  0x41, 0xf6, 0x44, 0x24, 0x04, 0x01, 0x75, 0x0a,
  0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x12, 0xeb, 0x07,
  0x49, 0x3b, 0x44, 0x24, 0x38, 0x75, 0x09,
  0x49, 0x83, 0xc4, 0x40, 0x49, 0xff, 0xc6, 0xeb, 0xb2,
  0x4c, 0x89, 0xf0, 0x4c, 0x89, 0xfa, 0xcc,
]);

/** Where a task's runner and record area are (in its restore stub). */
export interface BatchArea {
  runner: number;
  area: number;
  size: number;
}

export interface BatchCall {
  /**
   * What the error names, as a single remote syscall's would (`mmap(0x7f... anon)`);
   * a function when building the text costs more than the call (10 000 mmaps).
   */
  name: string | ((arg?: unknown) => string);
  /** What a function `name` is called with (one shared function instead of a closure per call). */
  nameArg?: unknown;
  nr: number;
  args: readonly (number | bigint)[];
  /** The one good result (mmap at a fixed address), and the error when it is another. */
  expect?: { value: bigint | number; mismatch: (got: bigint) => Error };
}

const nameOf = (c: { name: BatchCall['name']; nameArg?: unknown }) => (typeof c.name === 'string' ? c.name : c.name(c.nameArg));

/** One call's record at `o` of `b`, as the runner reads it. */
function writeRecord(b: Buffer, o: number, nr: number, args: readonly (number | bigint)[], expect: BatchCall['expect']): void {
  if (args.length > 6) throw new RangeError(`syscall ${nr}: a syscall has at most 6 arguments`);
  // 32-bit stores through a view of the buffer: Buffer's write methods
  // (16 calls a record, each checking its bounds) were ~3 ms of the 5 000
  // records of a 10 000-VMA address space. `b` is never a pooled slice.
  const w = words(b);
  if (!w || o % 4 !== 0) { writeRecordSlow(b, o, nr, args, expect); return; }
  const i = o >> 2;
  w[i] = nr;
  w[i + 1] = expect ? EXACT : 0;
  let a = 0;
  for (; a < args.length; a++) putWord(b, w, i + 2 + 2 * a, args[a]);
  // Missing arguments are 0 (a reused buffer holds older records).
  for (; a < 6; a++) { w[i + 2 + 2 * a] = 0; w[i + 3 + 2 * a] = 0; }
  if (expect) putWord(b, w, i + 14, expect.value);
  else { w[i + 14] = 0; w[i + 15] = 0; }
}

/** An Int32Array over the whole of `b`, kept per buffer; null when `b` is not 4-byte aligned. */
const views = new WeakMap<Buffer, Int32Array>();
function words(b: Buffer): Int32Array | null {
  let w = views.get(b);
  if (!w) {
    if (b.byteOffset % 4 !== 0) return null;
    views.set(b, (w = new Int32Array(b.buffer, b.byteOffset, b.length >> 2)));
  }
  return w;
}

/** writeRecord through Buffer's methods, for a buffer no Int32Array can view. */
function writeRecordSlow(b: Buffer, o: number, nr: number, args: readonly (number | bigint)[], expect: BatchCall['expect']): void {
  b.writeUInt32LE(nr, o);
  b.writeUInt32LE(expect ? EXACT : 0, o + 4);
  let a = 0;
  for (; a < args.length; a++) writeSyscallArg(b, o + 8 + a * 8, args[a]);
  for (; a < 6; a++) { b.writeUInt32LE(0, o + 8 + a * 8); b.writeUInt32LE(0, o + 12 + a * 8); }
  if (expect) writeSyscallArg(b, o + 56, expect.value);
  else { b.writeUInt32LE(0, o + 56); b.writeUInt32LE(0, o + 60); }
}

/** writeSyscallArg at word `i` (little-endian: low word first), without BigInt for plain numbers. */
function putWord(b: Buffer, w: Int32Array, i: number, v: number | bigint): void {
  if (typeof v === 'number' && Number.isInteger(v)) {
    if (v >= 0 && v <= Number.MAX_SAFE_INTEGER) {
      w[i] = v % 0x100000000;
      w[i + 1] = Math.floor(v / 0x100000000);
      return;
    }
    if (v < 0 && v >= -0x80000000) {
      w[i] = v;
      w[i + 1] = -1;
      return;
    }
  }
  writeSyscallArg(b, i * 4, v);
}

/** The records of `calls`, as the runner reads them. */
export function encodeBatch(calls: readonly BatchCall[]): Buffer {
  const b = Buffer.alloc(calls.length * BATCH_RECORD);
  calls.forEach((c, i) => {
    if (c.args.length > 6) throw new RangeError(`${nameOf(c)}: a syscall has at most 6 arguments`);
    writeRecord(b, i * BATCH_RECORD, c.nr, c.args, c.expect);
  });
  return b;
}

/** Whether a raw result passes a call's check (what the runner decides in the task). */
export function callSucceeded(c: Pick<BatchCall, 'expect'>, raw: bigint): boolean {
  if (c.expect) return BigInt.asUintN(64, raw) === BigInt.asUintN(64, BigInt(c.expect.value));
  return !isErrorReturn(raw);
}

/** Off (one remote syscall per call, as before batching) with TSNAP_REMOTE_BATCH=0: bench's baseline in the same run. */
const disabled = () => process.env.TSNAP_REMOTE_BATCH === '0';

/**
 * A list of calls for the task. With the stub's runner each call becomes
 * its record as it is queued (no object per call kept but its name and
 * check, which only a failure reads); without it the calls are kept and
 * run one remote syscall each.
 */
export class RemoteBatch {
  /** Records queued for the runner; null without one. */
  private recs: Buffer | null = null;
  /** Each queued record's name, its argument and its check, in three lists (no object per call: 5 000 of them). */
  private names: BatchCall['name'][] = [];
  private nameArgs: unknown[] = [];
  private expects: (BatchCall['expect'] | undefined)[] = [];
  /** Calls kept for a task without a runner. */
  private calls: BatchCall[] = [];
  /** Calls run so far (bench and tests). */
  ran = 0;
  /** Round trips to the task (one per flushed chunk; one per call without a batch area). */
  trips = 0;
  /** The raw result of the last call flush() ran (a call whose result is needed goes last: an fd). */
  lastResult = 0n;
  /** Whether the stub's runner takes the calls: decided at the first call queued, kept to the flush. */
  private direct: boolean | null = null;

  constructor(readonly rt: RemoteTask) {}

  /** `nameArg`: what a function `name` is called with, should the call fail. */
  push(name: BatchCall['name'], nr: number, args: readonly (number | bigint)[], expect?: BatchCall['expect'], nameArg?: unknown): void {
    this.direct ??= !disabled() && !!this.rt.batchArea && this.rt.sc.task.tracer === 'direct';
    if (!this.direct) {
      this.calls.push({ name, nameArg, nr, args, expect });
      return;
    }
    const n = this.names.length;
    let recs = this.recs ??= Buffer.allocUnsafeSlow(64 * BATCH_RECORD);
    if ((n + 1) * BATCH_RECORD > recs.length) {
      const bigger = Buffer.allocUnsafeSlow(recs.length * 2);
      recs.copy(bigger, 0, 0, n * BATCH_RECORD);
      this.recs = recs = bigger;
    }
    writeRecord(recs, n * BATCH_RECORD, nr, args, expect);
    this.names.push(name);
    this.nameArgs.push(nameArg);
    this.expects.push(expect);
  }

  get pending(): number {
    return this.direct ? this.names.length : this.calls.length;
  }

  /** Runs every queued call; throws for the first that failed (later ones never ran). */
  flush(): void {
    const direct = this.direct;
    this.direct = null;
    if (!direct) {
      const calls = this.calls;
      this.calls = [];
      for (const c of calls) {
        this.lastResult = this.rt.sc.call(c.nr, ...c.args);
        this.judge(c, this.lastResult);
      }
      this.trips += calls.length;
      this.ran += calls.length;
      return;
    }
    const { names, nameArgs, expects } = this;
    const recs = this.recs;
    this.names = [];
    this.nameArgs = [];
    this.expects = [];
    const area = this.rt.batchArea!;
    const per = Math.floor(area.size / BATCH_RECORD);
    for (let at = 0; at < names.length; at += per) {
      const count = Math.min(per, names.length - at);
      this.rt.mem.write(recs!, at * BATCH_RECORD, count * BATCH_RECORD, area.area);
      const { index, raw } = runBatch(this.rt, area, count);
      this.trips++;
      this.ran += Math.min(index + 1, count);
      // The runner's rdx: the result of the last call it ran.
      this.lastResult = raw;
      if (index < count) {
        const c = { name: names[at + index], nameArg: nameArgs[at + index], expect: expects[at + index] };
        this.judge(c, raw);
        // The runner stopped on a result the check here accepts: the two disagree.
        throw new TsnapError('internal', `the restore batch stopped at ${nameOf(c)} (result ${raw}), which succeeded`);
      }
    }
  }

  private judge(c: Pick<BatchCall, 'name' | 'nameArg' | 'expect'>, raw: bigint): void {
    if (callSucceeded(c, raw)) return;
    this.rt.sc.checked(nameOf(c), raw);
    throw c.expect!.mismatch(raw);
  }
}

/** Runs the runner over `count` records already in the area; the task ends at its int3. */
function runBatch(rt: RemoteTask, area: BatchArea, count: number): { index: number; raw: bigint } {
  const task = rt.sc.task;
  const { pid } = task;
  const regs = Buffer.from(task.savedRegs);
  writeReg(regs, 'rip', area.runner);
  writeReg(regs, 'orig_rax', -1n);
  writeReg(regs, 'rdi', area.area);
  writeReg(regs, 'rsi', count);
  ptrace.setRegs(pid, regs);
  task.atSyscallStop = true;
  ptrace.cont(pid, 0);
  const trapAt = BigInt(area.runner + BATCH_RUNNER.length);
  let after: Buffer = regs;
  waitForStop(pid, 60_000, (status) => {
    const sig = WaitStatus.stopSig(status);
    if (WaitStatus.event(status) === 0 && sig === SIGTRAP) {
      after = ptrace.getRegs(pid);
      if (readReg(after, 'rip') === trapAt) return true;
    } else if (WaitStatus.event(status) === 0) {
      // A signal for the task: held back until restore lets it go, as for single syscalls.
      task.deferredSignals.push(sig);
    }
    ptrace.cont(pid, 0);
    return false;
  });
  return { index: Number(readReg(after, 'rax')), raw: BigInt.asIntN(64, readReg(after, 'rdx')) };
}

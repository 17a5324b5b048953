/** The records the stub's runner reads, and the checks done when a task has no runner. */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { writeSyscallArg } from '../../src/inject/syscall-record.js';
import { encodeBatch, callSucceeded, RemoteBatch, BATCH_RECORD, BATCH_RUNNER, type BatchCall } from '../../src/inject/remote-batch.js';
import { SysError } from '../../src/sys/index.js';
import { TsnapError } from '../../src/errors.js';
import type { RemoteTask } from '../../src/inject/remote-task.js';

const landed = (start: number): BatchCall['expect'] => ({ value: BigInt(start), mismatch: (got) => new TsnapError('restoreFailed', `mmap of 0x${start.toString(16)} landed at 0x${got.toString(16)}`) });

describe('encodeBatch', () => {
  it('lays out nr, flags, six arguments and the expected result in 64 bytes per call', () => {
    const calls: BatchCall[] = [
      { name: 'mmap', nr: 9, args: [0x7f0000001000, 8192, 3, 0x100022, -1n, 0], expect: landed(0x7f0000001000) },
      { name: 'madvise', nr: 28, args: [0x1000, 4096, 14] },
    ];
    const b = encodeBatch(calls);
    expect(b.length).toBe(2 * BATCH_RECORD);
    expect(b.readUInt32LE(0)).toBe(9);
    expect(b.readUInt32LE(4)).toBe(1); // exact result expected
    expect(b.readBigUInt64LE(8)).toBe(0x7f0000001000n);
    expect(b.readBigUInt64LE(16)).toBe(8192n);
    expect(b.readBigUInt64LE(40)).toBe(0xffffffffffffffffn); // fd -1, two's complement
    expect(b.readBigUInt64LE(56)).toBe(0x7f0000001000n);
    expect(b.readUInt32LE(64)).toBe(28);
    expect(b.readUInt32LE(68)).toBe(0); // any non-error result
    expect(b.readBigUInt64LE(64 + 8 + 2 * 8)).toBe(14n);
    expect(b.readBigUInt64LE(64 + 8 + 5 * 8)).toBe(0n); // missing arguments are 0
    const n = encodeBatch([{ name: 'x', nr: 1, args: [-1, -4096, 2 ** 47 + 5, 0x1ffffffffn, -2n] }]);
    expect([0, 1, 2, 3, 4].map((i) => n.readBigUInt64LE(8 + i * 8))).toEqual([2n ** 64n - 1n, 2n ** 64n - 4096n, 2n ** 47n + 5n, 0x1ffffffffn, 2n ** 64n - 2n]);
    expect(() => encodeBatch([{ name: 'x', nr: 1, args: [1, 2, 3, 4, 5, 6, 7] }])).toThrow(/at most 6/);
  });

  it('writes every argument as writeSyscallArg does (the records are stored as 32-bit words)', () => {
    const arg = fc.oneof(
      fc.integer({ min: -0x80000000, max: 0x7fffffff }),
      fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
      fc.constantFrom(0, -1, -4096, 2 ** 32, 2 ** 32 - 1, 2 ** 31, 2 ** 47, Number.MAX_SAFE_INTEGER, -0x80000000, -0x80000001, 2 ** 53, 2 ** 60),
      fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }),
    );
    fc.assert(fc.property(fc.array(fc.record({ nr: fc.integer({ min: 0, max: 500 }), args: fc.array(arg, { maxLength: 6 }), exact: fc.option(arg) }), { minLength: 1, maxLength: 8 }), (list) => {
      const calls: BatchCall[] = list.map((c) => ({ name: 'x', nr: c.nr, args: c.args, expect: c.exact === null ? undefined : { value: c.exact, mismatch: () => new Error('x') } }));
      const want = Buffer.alloc(calls.length * BATCH_RECORD);
      calls.forEach((c, i) => {
        const o = i * BATCH_RECORD;
        want.writeUInt32LE(c.nr, o);
        want.writeUInt32LE(c.expect ? 1 : 0, o + 4);
        c.args.forEach((a, k) => writeSyscallArg(want, o + 8 + 8 * k, a));
        if (c.expect) writeSyscallArg(want, o + 56, c.expect.value);
      });
      expect(encodeBatch(calls).equals(want)).toBe(true);
    }));
  });

  it('judges results as the runner does: -4095..-1 are errors, an expected value must match exactly', () => {
    const plain: BatchCall = { name: 'mprotect', nr: 10, args: [] };
    expect(callSucceeded(plain, 0n)).toBe(true);
    expect(callSucceeded(plain, -1n)).toBe(false);
    expect(callSucceeded(plain, -4095n)).toBe(false);
    expect(callSucceeded(plain, -4096n)).toBe(true); // an address in the top page range, not an errno
    const m: BatchCall = { name: 'mmap', nr: 9, args: [], expect: landed(0x5000) };
    expect(callSucceeded(m, 0x5000n)).toBe(true);
    expect(callSucceeded(m, 0x6000n)).toBe(false);
    expect(callSucceeded(m, -17n)).toBe(false);
  });

  it('the runner ends with int3 and holds exactly one syscall instruction', () => {
    expect(BATCH_RUNNER[BATCH_RUNNER.length - 1]).toBe(0xcc);
    let syscalls = 0;
    for (let i = 0; i + 1 < BATCH_RUNNER.length; i++) if (BATCH_RUNNER[i] === 0x0f && BATCH_RUNNER[i + 1] === 0x05) syscalls++;
    expect(syscalls).toBe(1);
  });
});

describe('RemoteBatch without a runner', () => {
  /** A task whose syscalls return what `results` says, recording the calls. */
  function fakeTask(results: bigint[]) {
    const seen: number[] = [];
    const rt = {
      batchArea: null,
      pid: 42,
      sc: {
        task: { pid: 42, tracer: 'direct' },
        call: (nr: number) => { seen.push(nr); return results.shift() ?? 0n; },
        checked: (name: string, r: bigint) => { if (r < 0n && r > -4096n) throw new SysError(`remote ${name} in 42`, Number(-r)); return r; },
      },
    } as unknown as RemoteTask;
    return { rt, seen };
  }

  it('runs the calls in order and stops at the first failure, named as a single call would be', () => {
    const { rt, seen } = fakeTask([0x1000n, -17n, 0n]);
    const b = new RemoteBatch(rt);
    b.push('mmap(0x1000 anon)', 9, [0x1000, 4096], landed(0x1000));
    b.push('mmap(0x2000 anon)', 9, [0x2000, 4096], landed(0x2000));
    b.push('madvise(0x2000, 14)', 28, [0x2000, 4096, 14]);
    expect(() => b.flush()).toThrow(/remote mmap\(0x2000 anon\) in 42: EEXIST/);
    expect(seen).toEqual([9, 9]);
    expect(b.pending).toBe(0);
  });

  it('an mmap landing elsewhere is the mismatch error of its call', () => {
    const { rt } = fakeTask([0x9000n]);
    const b = new RemoteBatch(rt);
    b.push('mmap(0x1000 anon)', 9, [0x1000, 4096], landed(0x1000));
    expect(() => b.flush()).toThrow('mmap of 0x1000 landed at 0x9000');
  });
});

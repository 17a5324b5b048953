/** The record encoding both in-task syscall runners share (src/inject/syscall-record.ts). */
import { describe, it, expect } from 'vitest';
import { writeSyscallArg, isErrorReturn, SYSCALL_RECORD_SIZE } from '../../src/inject/syscall-record.js';

const word = (v: number | bigint) => { const b = Buffer.alloc(8); writeSyscallArg(b, 0, v); return b.readBigUInt64LE(0); };

describe('syscall records', () => {
  it('an argument is the 64-bit word a register would hold', () => {
    expect(SYSCALL_RECORD_SIZE).toBe(64);
    expect(word(0)).toBe(0n);
    expect(word(0x7f12_3456_7000)).toBe(0x7f1234567000n);
    expect(word(Number.MAX_SAFE_INTEGER)).toBe(BigInt(Number.MAX_SAFE_INTEGER));
    // Negative numbers sign-extend (AT_FDCWD, -1 for "no fd").
    expect(word(-100)).toBe(BigInt.asUintN(64, -100n));
    expect(word(-1)).toBe(0xffffffffffffffffn);
    expect(word(-0x1_0000_0000)).toBe(BigInt.asUintN(64, -0x100000000n));
    expect(word(0xffff_ffff_ffff_f000n)).toBe(0xfffffffffffff000n);
    expect(word(-4096n)).toBe(BigInt.asUintN(64, -4096n));
  });

  it('an error return is -4095..-1; an address in the top page range is not', () => {
    expect(isErrorReturn(-1n)).toBe(true);
    expect(isErrorReturn(-4095n)).toBe(true);
    expect(isErrorReturn(-4096n)).toBe(false);
    expect(isErrorReturn(0n)).toBe(false);
    expect(isErrorReturn(0x7f0000000000n)).toBe(false);
  });
});

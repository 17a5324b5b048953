/**
 * What the two in-task syscall runners share (syscall-batch.ts for a
 * dump's frozen task, remote-batch.ts for a task restore builds): a
 * 64-byte record per call holding the number and six arguments as 64-bit
 * words, and the kernel's rule for an error return. Why they are two
 * runners and not one is in each one's header.
 */

/** Bytes per call in both runners' tables: nr (+ flags), six arguments, one word for the result or the expected result. */
export const SYSCALL_RECORD_SIZE = 64;

/** A raw return from -4095 to -1 is -errno (the kernel's MAX_ERRNO). */
export function isErrorReturn(raw: bigint): boolean {
  return raw < 0n && raw > -4096n;
}

/**
 * One argument as the 64-bit word the syscall gets; without BigInt for
 * plain numbers (10 000 VMAs make 60 000 arguments). Negative numbers
 * sign-extend, as in a register.
 */
export function writeSyscallArg(b: Buffer, at: number, v: number | bigint): void {
  if (typeof v === 'bigint') {
    b.writeBigUInt64LE(BigInt.asUintN(64, v), at);
  } else if (v >= 0 && v <= Number.MAX_SAFE_INTEGER && Number.isInteger(v)) {
    b.writeUInt32LE(v % 0x100000000, at);
    b.writeUInt32LE(Math.floor(v / 0x100000000), at + 4);
  } else if (v < 0 && v >= -0x80000000 && Number.isInteger(v)) {
    b.writeInt32LE(v, at);
    b.writeInt32LE(-1, at + 4);
  } else {
    b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v)), at);
  }
}

/** /proc/PID/auxv: the ELF auxiliary vector the kernel handed the program at exec. */
import { readProcBuffer } from './read.js';

export const AT_NULL = 0;
export const AT_PAGESZ = 6;
export const AT_ENTRY = 9;

/** x86-64 only: each entry is two u64 (type, value), little-endian. */
const ENTRY = 16;

export function parseAuxv(buf: Buffer): { type: number; value: bigint }[] {
  const out: { type: number; value: bigint }[] = [];
  for (let off = 0; off + ENTRY <= buf.length; off += ENTRY) {
    const type = buf.readBigUInt64LE(off);
    if (type === 0n) break;
    out.push({ type: Number(type), value: buf.readBigUInt64LE(off + 8) });
  }
  return out;
}

/**
 * Raw bytes up to and including the AT_NULL entry, ready to write back with
 * prctl(PR_SET_MM_AUXV). The kernel may report slack after the terminator,
 * which would only be noise in an image. Empty for processes without an
 * mm (kernel threads, zombies); returned whole if no terminator is found.
 */
export function readAuxvRaw(pid: number): Buffer {
  const buf = readProcBuffer(pid, 'auxv');
  for (let off = 0; off + ENTRY <= buf.length; off += ENTRY) {
    if (buf.readBigUInt64LE(off) === 0n) return buf.subarray(0, off + ENTRY);
  }
  return buf;
}

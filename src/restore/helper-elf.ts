/**
 * The restore helper: a 129-byte static ELF whose only code is
 * `pause(); loop`. tsnap starts it, then makes it clone3() the process to
 * restore (with the original PID) and rebuilds that clone from scratch.
 * Built here rather than taken from the system so that the helper has no
 * libc, no threads and no state to clean up, on any machine.
 */
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BASE = 0x400000;
const EHDR = 64;
const PHDR = 56;

// _start: mov eax, 34 (pause); syscall; jmp _start
const CODE = Buffer.from([0xb8, 0x22, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0xf7]);

export function helperElf(): Buffer {
  const size = EHDR + PHDR + CODE.length;
  const b = Buffer.alloc(size);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0], 0); // ELF64, little-endian, SysV
  b.writeUInt16LE(2, 16); // ET_EXEC
  b.writeUInt16LE(0x3e, 18); // x86-64
  b.writeUInt32LE(1, 20);
  b.writeBigUInt64LE(BigInt(BASE + EHDR + PHDR), 24); // entry
  b.writeBigUInt64LE(BigInt(EHDR), 32); // phoff
  b.writeUInt16LE(EHDR, 52);
  b.writeUInt16LE(PHDR, 54);
  b.writeUInt16LE(1, 56); // one program header
  const p = EHDR;
  b.writeUInt32LE(1, p); // PT_LOAD
  b.writeUInt32LE(5, p + 4); // R+X
  b.writeBigUInt64LE(0n, p + 8);
  b.writeBigUInt64LE(BigInt(BASE), p + 16);
  b.writeBigUInt64LE(BigInt(BASE), p + 24);
  b.writeBigUInt64LE(BigInt(size), p + 32);
  b.writeBigUInt64LE(BigInt(size), p + 40);
  b.writeBigUInt64LE(0x1000n, p + 48);
  CODE.copy(b, EHDR + PHDR);
  return b;
}

/** Writes the helper to a private temporary file; returns its path and a remover. */
export function writeHelper(): { path: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'tsnap-helper-'));
  const path = join(dir, 'tsnap-restore-helper');
  writeFileSync(path, helperElf(), { mode: 0o700 });
  return { path, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

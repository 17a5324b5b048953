/**
 * Tiny static programs tsnap starts for itself, built here as raw x86-64
 * ELF files rather than taken from the system: no libc, no threads, no state
 * to clean up, on any machine.
 *
 * - the restore helper: `pause(); loop`. tsnap makes it clone3() the process
 *   to restore and rebuilds that clone from scratch. It holds the stdio
 *   the restored process is to get (often tsnap's own), so it must not
 *   outlive tsnap: its first instructions ask for SIGKILL on tsnap's death
 *   (PR_SET_PDEATHSIG) and then exit if tsnap already died before that
 *   (its parent is no longer tsnap, whose pid is written into the code);
 * - the tracking holder: keeps a copy of a target's userfaultfd (fd 4) open
 *   between tsnap runs, and exits when the target does (poll on its pidfd,
 *   fd 3), which closes the last copy and ends tracking with it.
 */
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const BASE = 0x400000;
const EHDR = 64;
const PHDR = 56;

function pauseLoopChildOf(parentPid: number): number[] {
  const ppid = Buffer.alloc(4);
  ppid.writeUInt32LE(parentPid);
  return [
    0xbf, 0x01, 0x00, 0x00, 0x00, //       mov edi, 1 (PR_SET_PDEATHSIG)
    0xbe, 0x09, 0x00, 0x00, 0x00, //       mov esi, 9 (SIGKILL)
    0xb8, 0x9d, 0x00, 0x00, 0x00, //       mov eax, 157 (prctl)
    0x0f, 0x05, //                         syscall
    0xb8, 0x6e, 0x00, 0x00, 0x00, //       mov eax, 110 (getppid)
    0x0f, 0x05, //                         syscall
    0x3d, ...ppid, //                      cmp eax, parentPid
    0x75, 0x09, //                         jne orphan
    // loop:
    0xb8, 0x22, 0x00, 0x00, 0x00, //       mov eax, 34 (pause)
    0x0f, 0x05, //                         syscall
    0xeb, 0xf7, //                         jmp loop
    // orphan:
    0xbf, 0x01, 0x00, 0x00, 0x00, //       mov edi, 1
    0xb8, 0xe7, 0x00, 0x00, 0x00, //       mov eax, 231 (exit_group)
    0x0f, 0x05, //                         syscall
  ];
}

const POLL_PIDFD_THEN_EXIT = [
  0x48, 0x83, 0xec, 0x10, //             sub rsp, 16
  // loop:
  0xc7, 0x04, 0x24, 0x03, 0x00, 0x00, 0x00, //       mov dword [rsp], 3      (pollfd.fd = the pidfd)
  0xc7, 0x44, 0x24, 0x04, 0x01, 0x00, 0x00, 0x00, // mov dword [rsp+4], 1    (events = POLLIN)
  0x48, 0x89, 0xe7, //                  mov rdi, rsp
  0xbe, 0x01, 0x00, 0x00, 0x00, //      mov esi, 1
  0xba, 0xff, 0xff, 0xff, 0xff, //      mov edx, -1
  0xb8, 0x07, 0x00, 0x00, 0x00, //      mov eax, 7 (poll)
  0x0f, 0x05, //                        syscall
  0x48, 0x83, 0xf8, 0xfc, //            cmp rax, -EINTR
  0x74, 0xd7, //                        je loop
  0x31, 0xff, //                        xor edi, edi
  0xb8, 0xe7, 0x00, 0x00, 0x00, //      mov eax, 231 (exit_group)
  0x0f, 0x05, //                        syscall
];

export function buildElf(code: number[]): Buffer {
  const size = EHDR + PHDR + code.length;
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
  Buffer.from(code).copy(b, EHDR + PHDR);
  return b;
}

/** The restore helper, for a parent of pid `parentPid` (tsnap itself by default). */
export const helperElf = (parentPid = process.pid) => buildElf(pauseLoopChildOf(parentPid));
export const holderElf = () => buildElf(POLL_PIDFD_THEN_EXIT);

/** Writes a program to a private temporary file named `name`; returns its path and a remover. */
export function writeProgram(name: string, elf: Buffer): { path: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'tsnap-'));
  const path = join(dir, name);
  writeFileSync(path, elf, { mode: 0o700 });
  return { path, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

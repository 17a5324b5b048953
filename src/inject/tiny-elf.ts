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
 *   fd 3), or when the tsnap that started it dies before committing an image
 *   (end-of-file on fd 5), which closes the last copy and ends tracking.
 *
 * Neither has a name in any file system (loadProgram): a tsnap SIGKILLed
 * between writing a program and removing it used to leave it in /dev/shm.
 */
import { openSync, closeSync, writeSync, readFileSync, readlinkSync, accessSync, constants } from 'node:fs';
import { tmpdir } from 'node:os';
import { memfdCreate, SysError } from '../sys/index.js';

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

// The holder. fd 3: pidfd of the target; fd 4: the uffd (only held); fd 5:
// the read end of a pipe whose write end the starting tsnap holds until the
// image naming this holder is committed. It exits when the target exits, or
// when fd 5 reaches end-of-file before one byte came (tsnap died before
// committing: tracking no image refers to must not outlive it). After the
// byte it closes fd 5 and watches the target only.
const HOLDER = [
  0x48, 0x83, 0xec, 0x20, //                         sub rsp, 32
  0xc7, 0x04, 0x24, 0x03, 0x00, 0x00, 0x00, //       mov dword [rsp], 3        (pollfd[0].fd = the pidfd)
  0xc7, 0x44, 0x24, 0x04, 0x01, 0x00, 0x00, 0x00, // mov dword [rsp+4], 1      (events = POLLIN)
  0xc7, 0x44, 0x24, 0x08, 0x05, 0x00, 0x00, 0x00, // mov dword [rsp+8], 5      (pollfd[1].fd = the commit pipe)
  0xc7, 0x44, 0x24, 0x0c, 0x01, 0x00, 0x00, 0x00, // mov dword [rsp+12], 1     (events = POLLIN)
  // poll_again:
  0x48, 0x89, 0xe7, //                               mov rdi, rsp
  0xbe, 0x02, 0x00, 0x00, 0x00, //                   mov esi, 2
  0xba, 0xff, 0xff, 0xff, 0xff, //                   mov edx, -1
  0xb8, 0x07, 0x00, 0x00, 0x00, //                   mov eax, 7 (poll)
  0x0f, 0x05, //                                     syscall
  0x48, 0x83, 0xf8, 0xfc, //                         cmp rax, -EINTR
  0x74, 0xe6, //                                     je poll_again
  0x48, 0x85, 0xc0, //                               test rax, rax
  0x78, 0x45, //                                     js done
  0x66, 0x83, 0x7c, 0x24, 0x06, 0x00, //             cmp word [rsp+6], 0       (pidfd revents: the target exited)
  0x75, 0x3d, //                                     jne done
  0x66, 0x83, 0x7c, 0x24, 0x0e, 0x00, //             cmp word [rsp+14], 0      (pipe revents)
  0x74, 0xd1, //                                     je poll_again
  // read_again:
  0xbf, 0x05, 0x00, 0x00, 0x00, //                   mov edi, 5
  0x48, 0x8d, 0x74, 0x24, 0x10, //                   lea rsi, [rsp+16]
  0xba, 0x01, 0x00, 0x00, 0x00, //                   mov edx, 1
  0x31, 0xc0, //                                     xor eax, eax (read)
  0x0f, 0x05, //                                     syscall
  0x48, 0x83, 0xf8, 0xfc, //                         cmp rax, -EINTR
  0x74, 0xe7, //                                     je read_again
  0x48, 0x83, 0xf8, 0x01, //                         cmp rax, 1                (0: tsnap died before committing)
  0x75, 0x16, //                                     jne done
  0xc7, 0x44, 0x24, 0x08, 0xff, 0xff, 0xff, 0xff, // mov dword [rsp+8], -1     (poll ignores it from now on)
  0xbf, 0x05, 0x00, 0x00, 0x00, //                   mov edi, 5
  0xb8, 0x03, 0x00, 0x00, 0x00, //                   mov eax, 3 (close)
  0x0f, 0x05, //                                     syscall
  0xeb, 0x9c, //                                     jmp poll_again
  // done:
  0x31, 0xff, //                                     xor edi, edi
  0xb8, 0xe7, 0x00, 0x00, 0x00, //                   mov eax, 231 (exit_group)
  0x0f, 0x05, //                                     syscall
];

/**
 * `code` preceded by prctl(PR_SET_NAME, name), the name stored after it.
 * A program exec'd through /proc/PID/fd/N would otherwise be called "N"
 * (the kernel takes the last component of the path given to execve), and
 * ps, untrack's users and the tests know these by name. No other absolute
 * address is in the code, whose jumps are relative: it may move.
 */
function named(name: string, code: number[]): number[] {
  const PROLOGUE = 17;
  const at = Buffer.alloc(4);
  at.writeUInt32LE(BASE + EHDR + PHDR + PROLOGUE + code.length);
  return [
    0xbf, 0x0f, 0x00, 0x00, 0x00, //       mov edi, 15 (PR_SET_NAME)
    0xbe, ...at, //                        mov esi, name
    0xb8, 0x9d, 0x00, 0x00, 0x00, //       mov eax, 157 (prctl)
    0x0f, 0x05, //                         syscall
    ...code,
    ...Buffer.from(`${name}\0`),
  ];
}

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

/** Names the programs run under (at most 15 characters are kept: "tsnap-restore-h"). */
export const HELPER_NAME = 'tsnap-restore-helper';
export const HOLDER_NAME = 'tsnap-track';

/** The restore helper, for a parent of pid `parentPid` (tsnap itself by default). */
export const helperElf = (parentPid = process.pid): Buffer => {
  // Built once per parent: every restore of a process (a library user's, a bench's) starts one.
  if (builtHelper?.parentPid !== parentPid) builtHelper = { parentPid, elf: buildElf(named(HELPER_NAME, pauseLoopChildOf(parentPid))) };
  return builtHelper.elf;
};
let builtHelper: { parentPid: number; elf: Buffer } | null = null;
export const holderElf = () => buildElf(named(HOLDER_NAME, HOLDER));

let programBase: string | null = null;

/**
 * Where the fallback's O_TMPFILE goes: /dev/shm when it is a tmpfs that
 * allows exec, else the temporary directory. On a disk file system (ext4
 * /tmp here) creating the file costs 2-3 ms (journal), and so does the last
 * close of the executable inside the restored process (its PR_SET_MM_MAP
 * replaces the helper's exe): both on a restore's critical path.
 */
function programDir(): string {
  if (programBase !== null) return programBase;
  programBase = tmpdir();
  try {
    const shm = readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')).find((f) => f[1] === '/dev/shm');
    if (shm && shm[2] === 'tmpfs' && !shm[3].split(',').includes('noexec')) {
      accessSync('/dev/shm', constants.W_OK | constants.X_OK);
      programBase = '/dev/shm';
    }
  } catch { /* the temporary directory */ }
  return programBase;
}

const MFD_CLOEXEC = 0x1;
/** Executable whatever vm.memfd_noexec says, or refused (EACCES at 2): then the fallback. */
const MFD_EXEC = 0x10;
/** __O_TMPFILE | O_DIRECTORY. */
const O_TMPFILE = 0o20200000;

let procSelf: string | null = null;

/**
 * This process as the /proc mount names it: the path of one of its fds must
 * be valid in a child whose fd table no longer has it (posix_spawn closes
 * every fd from 3 on), and inside a pid namespace of its own with the
 * parent's /proc, process.pid is not /proc's name for it.
 */
function procPid(): string {
  return (procSelf ??= readlinkSync('/proc/self'));
}

/**
 * Loads a program into an anonymous file, with no name in any file system:
 * a tsnap killed at any instant (SIGKILL, OOM) leaves nothing behind, the
 * kernel frees it with the last fd. `path` (/proc/PID/fd/N) execs it for as
 * long as the fd is open, in this process or a child (posix_spawn, which
 * returns once the child has exec'd, or Node's spawn); `remove` closes it.
 *
 * A memfd (executable: MFD_EXEC); where vm.memfd_noexec forbids that, an
 * O_TMPFILE in programDir() reopened read-only (execve refuses a file open
 * for writing: ETXTBSY). TSNAP_PROGRAM_MEMFD=0 takes the fallback (tests).
 */
export function loadProgram(name: string, elf: Buffer): { path: string; remove: () => void } {
  let fd = process.env.TSNAP_PROGRAM_MEMFD === '0' ? -1 : memfdOrNone(name);
  const memfd = fd >= 0;
  if (!memfd) fd = tmpfileProgram();
  try {
    for (let at = 0; at < elf.length;) at += writeSync(fd, elf, at, elf.length - at, at);
    if (!memfd) {
      const ro = openSync(`/proc/self/fd/${fd}`, constants.O_RDONLY);
      closeSync(fd);
      fd = ro;
    }
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  const open = fd;
  return { path: `/proc/${procPid()}/fd/${open}`, remove: () => closeSync(open) };
}

function memfdOrNone(name: string): number {
  try {
    return memfdCreate(name, MFD_CLOEXEC | MFD_EXEC);
  } catch (err) {
    if (err instanceof SysError && (err.code === 'EACCES' || err.code === 'EINVAL' || err.code === 'EPERM')) return -1;
    throw err;
  }
}

function tmpfileProgram(): number {
  // 0700: exec'd by its owner only; libuv opens every fd close-on-exec: no other child keeps it.
  return openSync(programDir(), O_TMPFILE | constants.O_RDWR, 0o700);
}

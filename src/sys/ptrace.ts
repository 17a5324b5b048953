/**
 * ptrace and waitpid. Every request here is synchronous on the main thread
 * (see libc.ts). Buffers returned are owned by the caller.
 */
import { libc } from './libc.js';
import { SysError } from './errors.js';
import {
  PTRACE, USER_REGS_SIZE, NT_X86_XSTATE, WNOHANG, __WALL, SIGINFO_SIZE, PTRACE_PEEKSIGINFO_SHARED,
  PTRACE_GET_RSEQ_CONFIGURATION, RSEQ_CONFIG_SIZE, SECCOMP_MAX_INSNS, SOCK_FILTER_SIZE, SECCOMP_METADATA_SIZE,
} from './uapi.js';

function check(call: string, ret: number | bigint): number {
  if (Number(ret) === -1) throw new SysError(call, libc.errno());
  return Number(ret);
}

export function seize(pid: number, options: number): void {
  check(`ptrace(SEIZE, ${pid})`, libc.ptrace(PTRACE.SEIZE, pid, 0, options));
}
export function interrupt(pid: number): void {
  check(`ptrace(INTERRUPT, ${pid})`, libc.ptrace(PTRACE.INTERRUPT, pid, 0, 0));
}
export function cont(pid: number, sig = 0): void {
  check(`ptrace(CONT, ${pid})`, libc.ptrace(PTRACE.CONT, pid, 0, sig));
}
export function syscallStep(pid: number, sig = 0): void {
  check(`ptrace(SYSCALL, ${pid})`, libc.ptrace(PTRACE.SYSCALL, pid, 0, sig));
}
export function setOptions(pid: number, options: number): void {
  check(`ptrace(SETOPTIONS, ${pid})`, libc.ptrace(PTRACE.SETOPTIONS, pid, 0, options));
}
export function detach(pid: number, sig = 0): void {
  check(`ptrace(DETACH, ${pid})`, libc.ptrace(PTRACE.DETACH, pid, 0, sig));
}

export function getRegs(pid: number): Buffer {
  const buf = Buffer.alloc(USER_REGS_SIZE);
  check(`ptrace(GETREGS, ${pid})`, libc.ptraceBuf(PTRACE.GETREGS, pid, 0, buf));
  return buf;
}
export function setRegs(pid: number, regs: Buffer): void {
  check(`ptrace(SETREGS, ${pid})`, libc.ptraceBuf(PTRACE.SETREGS, pid, 0, regs));
}

/** struct iovec { base, len } in a Buffer, pointing at `target`. */
function iovecFor(target: Buffer, len = target.length): Buffer {
  const iov = Buffer.alloc(16);
  iov.writeBigUInt64LE(libc.address(target), 0);
  iov.writeBigUInt64LE(BigInt(len), 8);
  return iov;
}

/** Largest XSAVE area the kernel may hand out (AMX tiles included). */
const XSTATE_MAX = 16384;

/** The full XSAVE area (x87, SSE, AVX, AVX-512, PKRU...) as the kernel lays it out. */
export function getXstate(pid: number): Buffer {
  const buf = Buffer.alloc(XSTATE_MAX);
  const iov = iovecFor(buf);
  check(`ptrace(GETREGSET NT_X86_XSTATE, ${pid})`,
    libc.ptraceBuf(PTRACE.GETREGSET, pid, NT_X86_XSTATE, iov));
  const len = Number(iov.readBigUInt64LE(8));
  return Buffer.from(buf.subarray(0, len));
}
export function setXstate(pid: number, xstate: Buffer): void {
  check(`ptrace(SETREGSET NT_X86_XSTATE, ${pid})`,
    libc.ptraceBuf(PTRACE.SETREGSET, pid, NT_X86_XSTATE, iovecFor(xstate)));
}

export function getSigmask(pid: number): bigint {
  const buf = Buffer.alloc(8);
  check(`ptrace(GETSIGMASK, ${pid})`, libc.ptraceBuf(PTRACE.GETSIGMASK, pid, 8, buf));
  return buf.readBigUInt64LE(0);
}
export function setSigmask(pid: number, mask: bigint): void {
  const buf = Buffer.alloc(8);
  buf.writeBigUInt64LE(mask);
  check(`ptrace(SETSIGMASK, ${pid})`, libc.ptraceBuf(PTRACE.SETSIGMASK, pid, 8, buf));
}

/** Queued siginfo records (128 bytes each) of the thread or, with shared, the process. */
export function peekSiginfo(pid: number, shared: boolean): Buffer[] {
  const out: Buffer[] = [];
  const batch = 32;
  for (let off = 0; ; off += batch) {
    const args = Buffer.alloc(16);
    args.writeBigUInt64LE(BigInt(off), 0);
    args.writeUInt32LE(shared ? PTRACE_PEEKSIGINFO_SHARED : 0, 8);
    args.writeInt32LE(batch, 12);
    const buf = Buffer.alloc(batch * SIGINFO_SIZE);
    const n = check(`ptrace(PEEKSIGINFO, ${pid})`,
      libc.ptraceBuf(PTRACE.PEEKSIGINFO, pid, libc.address(args), buf));
    for (let i = 0; i < n; i++) out.push(Buffer.from(buf.subarray(i * SIGINFO_SIZE, (i + 1) * SIGINFO_SIZE)));
    if (n < batch) return out;
  }
}

export interface WaitResult {
  pid: number;
  status: number;
}

/** Decoded wait status. */
export const WaitStatus = {
  exited: (s: number) => (s & 0x7f) === 0,
  exitCode: (s: number) => (s >> 8) & 0xff,
  signaled: (s: number) => ((s & 0x7f) + 1) >> 1 > 0 && (s & 0x7f) !== 0x7f && (s & 0x7f) !== 0,
  termSig: (s: number) => s & 0x7f,
  stopped: (s: number) => (s & 0xff) === 0x7f,
  stopSig: (s: number) => (s >> 8) & 0xff,
  /** PTRACE_EVENT_* number of a stop, 0 when none. */
  event: (s: number) => (s >> 16) & 0xff,
};

export function waitpidNoHang(pid: number): WaitResult | null {
  const st = Buffer.alloc(4);
  const r = libc.waitpid(pid, st, WNOHANG | __WALL);
  if (r === -1) throw new SysError(`waitpid(${pid})`, libc.errno());
  if (r === 0) return null;
  return { pid: r, status: st.readInt32LE(0) };
}

export function waitpidBlocking(pid: number): WaitResult {
  const st = Buffer.alloc(4);
  for (;;) {
    const r = libc.waitpid(pid, st, __WALL);
    if (r === -1) {
      const e = libc.errno();
      if (e === 4) continue; // EINTR
      throw new SysError(`waitpid(${pid})`, e);
    }
    return { pid: r, status: st.readInt32LE(0) };
  }
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Waits for a state change of `pid`, giving up after `timeoutMs` instead of
 * blocking forever on a task stuck in uninterruptible sleep. Spins briefly
 * first: ptrace stops usually arrive within microseconds.
 */
export function waitpidTimeout(pid: number, timeoutMs: number): WaitResult | null {
  for (let i = 0; i < 200; i++) {
    const r = waitpidNoHang(pid);
    if (r) return r;
  }
  const deadline = Date.now() + timeoutMs;
  let nap = 0.05;
  while (Date.now() < deadline) {
    const r = waitpidNoHang(pid);
    if (r) return r;
    Atomics.wait(sleepCell, 0, 0, nap);
    // Capped low: on a busy machine a stop often comes 1-10 ms late (the
    // task waits for a CPU), and a 5 ms nap overshot it by up to as much,
    // once per remote syscall of a restore.
    nap = Math.min(nap * 2, 0.5);
  }
  return null;
}

export interface RseqConfig { pointer: bigint; size: number; signature: number; flags: number }

/** The rseq area the thread registered (glibc registers one for every thread). */
export function getRseqConfig(pid: number): RseqConfig | null {
  const buf = Buffer.alloc(RSEQ_CONFIG_SIZE);
  const r = libc.ptraceBuf(PTRACE_GET_RSEQ_CONFIGURATION, pid, RSEQ_CONFIG_SIZE, buf);
  if (Number(r) === -1) throw new SysError(`ptrace(GET_RSEQ_CONFIGURATION, ${pid})`, libc.errno());
  return parseRseqConfig(buf);
}

/** struct ptrace_rseq_configuration; null when the thread registered none. */
export function parseRseqConfig(buf: Buffer): RseqConfig | null {
  const pointer = buf.readBigUInt64LE(0);
  if (pointer === 0n) return null;
  return { pointer, size: buf.readUInt32LE(8), signature: buf.readUInt32LE(12), flags: buf.readUInt32LE(16) };
}

/** One seccomp filter of a thread: its classic BPF program and the flags it was installed with. */
export interface SeccompFilter {
  /** struct sock_filter[], 8 bytes each. */
  prog: Buffer;
  /** SECCOMP_FILTER_FLAG_LOG, the one flag PTRACE_SECCOMP_GET_METADATA reports. */
  flags: number;
}

/**
 * The thread's filter `index` (0: the oldest, as get_nth_filter counts) or null past the newest.
 * Needs CAP_SYS_ADMIN; the tracee must be stopped.
 */
export function getSeccompFilter(pid: number, index: number): SeccompFilter | null {
  const buf = Buffer.alloc(SECCOMP_MAX_INSNS * SOCK_FILTER_SIZE);
  const n = Number(libc.ptraceBuf(PTRACE.SECCOMP_GET_FILTER, pid, index, buf));
  if (n === -1) {
    const e = libc.errno();
    if (e === 2 /* ENOENT: no filter at that depth */) return null;
    throw new SysError(`ptrace(SECCOMP_GET_FILTER, ${pid}, ${index})`, e);
  }
  const meta = Buffer.alloc(SECCOMP_METADATA_SIZE);
  meta.writeBigUInt64LE(BigInt(index), 0);
  if (Number(libc.ptraceBuf(PTRACE.SECCOMP_GET_METADATA, pid, SECCOMP_METADATA_SIZE, meta)) === -1) {
    throw new SysError(`ptrace(SECCOMP_GET_METADATA, ${pid}, ${index})`, libc.errno());
  }
  return { prog: Buffer.from(buf.subarray(0, n * SOCK_FILTER_SIZE)), flags: Number(meta.readBigUInt64LE(8)) };
}

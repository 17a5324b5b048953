/**
 * The client side of tsnap-guardian (src/guardian/tsnap-guardian.c): the
 * native process that is the ptrace tracer of everything tsnap freezes for
 * a dump, and that puts every tracee back as it was frozen should tsnap die
 * at any instant (SIGKILL, OOM kill, crash). See formats/guardian-v1.md.
 *
 * Requests are synchronous on the main thread, one message each way over a
 * SOCK_SEQPACKET socket pair. The guardian is started on first use, in its
 * own session (terminal signals meant for tsnap do not reach it), and ends
 * when tsnap's end of the socket closes, which happens exactly when tsnap
 * exits, however it exits.
 */
import { guardianState } from './guardian-state.js';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { libc } from './libc.js';
import { posixSpawn } from './spawn.js';
import { waitpidNoHang } from './ptrace.js';
import { SysError } from './errors.js';
import { USER_REGS_SIZE } from './uapi.js';
import { faultPoint } from '../fault-points.js';

const PROTOCOL_VERSION = 6n;
const AF_UNIX = 1;
const SOCK_SEQPACKET = 5;
const SOCK_CLOEXEC = 0o2000000;
const MSG_NOSIGNAL = 0x4000;
const REQUEST_SIZE = 8 + 18 * 8;
const REPLY_HEADER = 16;
const MAX_DATA = 256 * 1024;
/** Syscalls one OP_SYSCALLS request may carry (MAX_BATCH in tsnap-guardian.c). */
export const GUARDIAN_MAX_BATCH = 512;
const BATCH_CALL_SIZE = 7 * 8;

const Op = {
  hello: 0, freeze: 1, release: 2, kill: 3, getRegs: 4, getXstate: 5,
  getSigmask: 6, peekSiginfo: 7, getRseq: 8, syscall: 9, repairHold: 10, repairDrop: 11, unlockHold: 12, unlockDrop: 13, throttleHold: 14, throttleDrop: 15, killOnExit: 16, syscalls: 17, run: 18, pipe: 19, undoDrop: 20, seccompFilter: 21,
} as const;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;

/** Guardian-specific failures, beyond errno values (tsnap-guardian.c). */
export const GuardianFailure = { exited: 10001, timeout: 10002, unknown: 10003, badRequest: 10004 } as const;

/** A request the guardian could not carry out. `errno` is an errno value or a GuardianFailure. */
export class GuardianError extends SysError {
  constructor(call: string, errno: number) {
    super(call, errno);
    this.name = 'GuardianError';
  }
  get exited(): boolean { return this.errno === GuardianFailure.exited; }
  get timedOut(): boolean { return this.errno === GuardianFailure.timeout; }
}

/** Thrown when the guardian binary is missing or does not answer. */
export class GuardianUnavailable extends Error {}

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && JSON.parse(readFileSync(pkg, 'utf8')).name === 'tsnap') return dir;
    const up = dirname(dir);
    if (up === dir) throw new GuardianUnavailable('cannot find the tsnap package directory');
    dir = up;
  }
}

export function guardianPath(): string {
  return process.env.TSNAP_GUARDIAN ?? join(packageRoot(), 'dist', 'native', 'tsnap-guardian');
}

/**
 * Starts the guardian with `sock` as its fd 3, stdio on /dev/null, in its
 * own session. posix_spawn, not Node's spawn(), which forks all of tsnap
 * (~5-10 ms of a small dump, and node:child_process loaded for it). The
 * environment goes along: the guardian runs iptables-restore through PATH.
 * tsnap reaps it (reapExited), as libuv did for spawn().
 */
function spawnGuardian(path: string, sock: number): number {
  const nul = openSync('/dev/null', 'r+');
  try {
    return posixSpawn(path, [], [nul, nul, nul, sock], true, process.env);
  } finally {
    closeSync(nul);
  }
}

/** Guardians told to exit and not yet reaped. */
const exited: number[] = [];

/** Reaps those of `exited` that are gone (a guardian still exiting is reaped at the next call). */
function reapExited(): void {
  for (let i = exited.length - 1; i >= 0; i--) {
    let gone: boolean;
    try { gone = waitpidNoHang(exited[i]) !== null; } catch { gone = true; }
    if (gone) exited.splice(i, 1);
  }
}

export interface SyscallUndo {
  /** The syscall that undoes this one (munmap for mmap, close for an fd). */
  nr: number;
  args: (number | bigint)[];
  /** Which argument of the undo receives this call's result (-1: none). */
  resultSlot: number;
}

export class Guardian {
  private static current: Guardian | null = null;
  private readonly req = Buffer.alloc(REQUEST_SIZE);
  private readonly reply = Buffer.alloc(REPLY_HEADER + MAX_DATA);

  private constructor(private readonly fd: number, readonly pid: number) {}

  /** The guardian of this tsnap process, started on first use. */
  static get(): Guardian {
    if (!Guardian.current) Guardian.current = Guardian.start();
    return Guardian.current;
  }

  /**
   * Closes this process's end: the guardian undoes whatever it still holds
   * and exits, as it would at tsnap's exit. For long-lived users of the
   * in-process API (tests); the next get() starts a new one.
   */
  /** Whether this process has a guardian now (without starting one). */
  static get running(): boolean {
    return Guardian.current !== null;
  }

  static shutdown(): void {
    const g = Guardian.current;
    if (!g) return;
    Guardian.current = null;
    try { closeSync(g.fd); } catch { /* closed */ }
    if (g.pid > 0) exited.push(g.pid);
    reapExited();
  }

  /**
   * shutdown(), then waits (at most `timeoutMs`) until the guardian has
   * exited: whatever it still held is put back by then. tsnap's CLI ends
   * with it, so that nothing of a finished command outlives it (a guardian
   * still exiting under load would).
   */
  static shutdownAndWait(timeoutMs = 3000): void {
    const g = Guardian.current;
    if (!g) return;
    Guardian.shutdown();
    const nap = new Int32Array(new SharedArrayBuffer(4));
    for (let waited = 0; waited < timeoutMs; waited += 2) {
      let state: string;
      try {
        const st = readFileSync(`/proc/${g.pid}/stat`, 'utf8');
        state = st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3);
      } catch {
        return;
      }
      if (state === 'Z' || state === 'X') { reapExited(); return; }
      Atomics.wait(nap, 0, 0, 2);
    }
  }

  private static start(): Guardian {
    reapExited();
    const path = guardianPath();
    if (!existsSync(path)) {
      throw new GuardianUnavailable(`the native guardian ${path} is missing; run \`npm run build\` in the tsnap directory (it needs a C compiler, cc)`);
    }
    const sv = Buffer.alloc(8);
    if (libc.socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) === -1) throw new SysError('socketpair', libc.errno());
    const ours = sv.readInt32LE(0);
    const theirs = sv.readInt32LE(4);
    let pid = -1;
    try {
      pid = spawnGuardian(path, theirs);
    } catch { /* seen by the handshake below */ } finally {
      closeSync(theirs);
    }
    const g = new Guardian(ours, pid);
    guardianState.started = true;
    let version: bigint;
    try {
      version = g.call('hello', Op.hello, 0).ret;
    } catch (err) {
      closeSync(ours);
      throw new GuardianUnavailable(`the native guardian ${path} did not start (${(err as Error).message}); rebuild with \`npm run build\``);
    }
    if (version !== PROTOCOL_VERSION) {
      closeSync(ours);
      throw new GuardianUnavailable(`the native guardian ${path} speaks protocol ${version}, not ${PROTOCOL_VERSION}; rebuild with \`npm run build\``);
    }
    return g;
  }

  /** Requests sent and remote syscalls run so far (dump stats: frozenParts). */
  static counts = { calls: 0, syscalls: 0 };

  private call(name: string, op: number, tid: number, args: (number | bigint)[] = [], passFd = -1, tail?: Buffer): { ret: bigint; data: Buffer } {
    Guardian.counts.calls++;
    const q = tail ? Buffer.alloc(REQUEST_SIZE + tail.length) : this.req;
    q.fill(0, 0, REQUEST_SIZE);
    q.writeUInt32LE(op, 0);
    q.writeInt32LE(tid, 4);
    args.forEach((a, i) => q.writeBigInt64LE(BigInt.asIntN(64, BigInt(a)), 8 + i * 8));
    if (tail) tail.copy(q, REQUEST_SIZE);
    const msg = passFd >= 0 ? messageWithFd(q, passFd) : null;
    for (;;) {
      const n = Number(msg ? libc.sendmsg(this.fd, msg.hdr, MSG_NOSIGNAL) : libc.send(this.fd, q, q.length, MSG_NOSIGNAL));
      if (n === q.length) break;
      const e = libc.errno();
      if (n === -1 && e === 4) continue; // EINTR
      throw new GuardianUnavailable(`the guardian went away (send: ${new SysError('send', e).code})`);
    }
    // Dying here leaves the guardian in the middle of this request.
    faultPoint('guardian-request');
    let n: number;
    for (;;) {
      n = Number(libc.recv(this.fd, this.reply, this.reply.length, 0));
      if (n === -1 && libc.errno() === 4) continue;
      break;
    }
    if (n < REPLY_HEADER) throw new GuardianUnavailable('the guardian went away (it was killed?); the frozen processes were let go by the kernel');
    const ret = this.reply.readBigInt64LE(0);
    const err = this.reply.readInt32LE(8);
    const len = this.reply.readUInt32LE(12);
    if (err !== 0) throw new GuardianError(name, err);
    return { ret, data: Buffer.from(this.reply.subarray(REPLY_HEADER, REPLY_HEADER + len)) };
  }

  /**
   * PTRACE_SEIZE + PTRACE_INTERRUPT, waits for the stop: the registers
   * found (which the guardian keeps to put back) and the stop signal
   * (SIGTRAP, or the signal of a group stop the task was already in).
   * `raise`: the task is in SCHED_FIFO 1 until its release, which gives
   * its own class back (the guardian holds it; best effort).
   */
  freeze(tid: number, options: number, timeoutMs: number, raise = false): { regs: Buffer; stopSignal: number } {
    const r = this.call(`ptrace(SEIZE, ${tid})`, Op.freeze, tid, [options, timeoutMs, raise ? 1 : 0]);
    return { regs: r.data, stopSignal: Number(r.ret) };
  }

  /** Undoes what is left of tsnap's in the task, puts its registers back, detaches, re-sends held signals. */
  release(tid: number): void {
    this.call(`release(${tid})`, Op.release, tid);
  }

  /**
   * Should tsnap die from now on, the task is killed rather than put back
   * (post-copy: the process runs on another host, and the source resuming
   * would run it twice).
   */
  killOnExit(tid: number): void {
    this.call(`kill-on-exit(${tid})`, Op.killOnExit, tid);
  }

  /** SIGKILL to `pid` (0: none) and reaps the given tids, in order (the leader last). */
  kill(pid: number, tids: number[]): void {
    for (let i = 0; i === 0 || i < tids.length; i += 16) {
      const chunk = tids.slice(i, i + 16);
      this.call(`kill(${pid})`, Op.kill, 0, [i === 0 ? pid : 0, chunk.length, ...chunk]);
    }
  }

  getRegs(tid: number): Buffer {
    const r = this.call(`ptrace(GETREGS, ${tid})`, Op.getRegs, tid).data;
    if (r.length !== USER_REGS_SIZE) throw new GuardianError(`ptrace(GETREGS, ${tid})`, GuardianFailure.badRequest);
    return r;
  }
  getXstate(tid: number): Buffer {
    return this.call(`ptrace(GETREGSET NT_X86_XSTATE, ${tid})`, Op.getXstate, tid).data;
  }
  getSigmask(tid: number): bigint {
    return this.call(`ptrace(GETSIGMASK, ${tid})`, Op.getSigmask, tid).data.readBigUInt64LE(0);
  }
  peekSiginfo(tid: number, shared: boolean): Buffer {
    return this.call(`ptrace(PEEKSIGINFO, ${tid})`, Op.peekSiginfo, tid, [shared ? 1 : 0]).data;
  }
  getRseq(tid: number): Buffer {
    return this.call(`ptrace(GET_RSEQ_CONFIGURATION, ${tid})`, Op.getRseq, tid).data;
  }
  /** The thread's seccomp filter `index` (0: the oldest), or null past the newest. */
  seccompFilter(tid: number, index: number): { prog: Buffer; flags: number } | null {
    try {
      const r = this.call(`ptrace(SECCOMP_GET_FILTER, ${tid}, ${index})`, Op.seccompFilter, tid, [index]);
      return { prog: Buffer.from(r.data), flags: Number(r.ret) };
    } catch (err) {
      if (err instanceof GuardianError && err.code === 'ENOENT') return null;
      throw err;
    }
  }

  /** Hands over a copy of a TCP socket in repair mode: should tsnap die, the guardian switches repair off. */
  holdRepair(fd: number): bigint {
    return this.call('hold TCP repair socket', Op.repairHold, 0, [], fd).ret;
  }

  /**
   * Hands over an fd of an iptables-restore script that removes the network
   * lock of a connection: should tsnap die, the guardian runs it.
   */
  holdUnlock(fd: number, v6: boolean): bigint {
    return this.call('hold TCP unlock script', Op.unlockHold, 0, [v6 ? 1 : 0], fd).ret;
  }

  /** tsnap removed the lock itself, or handed it to an image. */
  dropUnlock(id: bigint): void {
    this.call('drop TCP unlock script', Op.unlockDrop, 0, [id]);
  }

  /**
   * Hands over an fd of a cgroup v1 cpu directory whose child
   * "tsnap-throttle-<pid>.<start>" throttles tasks that came from it:
   * should tsnap die, the guardian lifts the quota and moves them back.
   */
  holdThrottle(dirFd: number, pid: number, start: number): bigint {
    return this.call('hold source throttle', Op.throttleHold, 0, [pid, start], dirFd).ret;
  }

  /** tsnap put the throttled tasks back itself. */
  dropThrottle(id: bigint): void {
    this.call('drop source throttle', Op.throttleDrop, 0, [id]);
  }

  /** tsnap has ended repair mode itself (or the socket dies with its process). */
  dropRepair(id: bigint): void {
    this.call('drop TCP repair socket', Op.repairDrop, 0, [id]);
  }

  /**
   * One syscall run by the frozen task at `gadget`. `undo`: what the
   * guardian runs in the task should tsnap die before it undoes the call
   * itself; the returned id is passed as `cancels` by the call that does.
   */
  syscall(tid: number, gadget: number, nr: number, args: (number | bigint)[], undo: SyscallUndo | null, cancels: bigint, timeoutMs = 60_000): { ret: bigint; undoId: bigint } {
    Guardian.counts.syscalls++;
    const a = [0, 0, 0, 0, 0, 0].map((z, i) => args[i] ?? z);
    const u = [0, 0, 0, 0, 0, 0].map((z, i) => undo?.args[i] ?? z);
    const { ret, data } = this.call(`remote syscall ${nr} in ${tid}`, Op.syscall, tid,
      [gadget, nr, ...a, undo ? undo.nr : -1, ...u, undo ? undo.resultSlot : -1, cancels, timeoutMs]);
    return { ret, undoId: data.readBigUInt64LE(0) };
  }

  /**
   * Runs code tsnap wrote into the task (a scratch mapping it made, with an
   * undo) from `entry`, with rbx and r12 set, until the int3 ending at
   * `code.end` traps. Whatever the code computes stays in the task's memory.
   */
  run(tid: number, entry: number, rbx: number, r12: number, code: { start: number; end: number }, timeoutMs = 60_000): void {
    const args: (number | bigint)[] = new Array(18).fill(0);
    args[0] = entry; args[1] = rbx; args[2] = r12; args[3] = code.start; args[4] = code.end; args[17] = timeoutMs;
    this.call(`run tsnap's code in ${tid}`, Op.run, tid, args);
  }

  /**
   * pipe2(`scratch`, flags) run by the frozen task, both ends put on its
   * undo list in the same request (the fds come back through memory, which
   * SYSCALL's undo cannot name). `ret`: the raw result; on success the two
   * fds and the undo id of each end's close, for callUndoing().
   */
  pipe(tid: number, gadget: number, scratch: number, flags: number, timeoutMs = 60_000): { ret: bigint; fds: [number, number]; undo: [bigint, bigint] } {
    const { ret, made } = this.pipes(tid, gadget, scratch, flags, 1, timeoutMs);
    if (ret < 0n || !made.length) return { ret, fds: [-1, -1], undo: [0n, 0n] };
    return { ret, ...made[0] };
  }

  /**
   * pipe() `count` times in one request (`scratch`: 8 bytes per pipe), each
   * pipe on the undo list before the next is made. `made`: the pipes made,
   * as many as the undo list had room for; `ret`: the raw result of the
   * last pipe2 (negative: it failed, and `made` holds those before it).
   * The ids of one request are consecutive: dropUndos() takes them as a range.
   */
  pipes(tid: number, gadget: number, scratch: number, flags: number, count: number, timeoutMs = 60_000): { ret: bigint; made: { fds: [number, number]; undo: [bigint, bigint] }[] } {
    Guardian.counts.syscalls += count;
    const args: (number | bigint)[] = new Array(18).fill(0);
    args[0] = gadget; args[1] = scratch; args[2] = flags; args[3] = count; args[17] = timeoutMs;
    const { ret, data } = this.call(`remote pipe2 in ${tid}`, Op.pipe, tid, args);
    const made: { fds: [number, number]; undo: [bigint, bigint] }[] = [];
    for (let o = 0; o + 24 <= data.length; o += 24) {
      made.push({ fds: [data.readInt32LE(o), data.readInt32LE(o + 4)], undo: [data.readBigUInt64LE(o + 8), data.readBigUInt64LE(o + 16)] });
    }
    return { ret, made };
  }

  /**
   * tsnap undid the undos with ids from `first` to `last` itself (closed
   * their fds in one remote step): the guardian forgets them. Returns how
   * many it forgot.
   */
  dropUndos(tid: number, first: bigint, last: bigint): number {
    return Number(this.call(`drop undos of ${tid}`, Op.undoDrop, tid, [first, last]).ret);
  }

  /**
   * Several syscalls run in order by the frozen task at `gadget`, in one
   * request: the raw result of each. None may leave anything in the task
   * (no undo): those go through syscall() one by one.
   */
  syscalls(tid: number, gadget: number, calls: readonly { nr: number; args: readonly (number | bigint)[] }[], timeoutMs = 60_000): bigint[] {
    if (calls.length > GUARDIAN_MAX_BATCH) throw new RangeError(`at most ${GUARDIAN_MAX_BATCH} syscalls per batch`);
    Guardian.counts.syscalls += calls.length;
    const tail = Buffer.alloc(calls.length * BATCH_CALL_SIZE);
    calls.forEach((c, i) => {
      tail.writeBigInt64LE(BigInt(c.nr), i * BATCH_CALL_SIZE);
      for (let k = 0; k < 6; k++) tail.writeBigInt64LE(BigInt.asIntN(64, BigInt(c.args[k] ?? 0)), i * BATCH_CALL_SIZE + 8 + k * 8);
    });
    const args: (number | bigint)[] = new Array(18).fill(0);
    args[0] = gadget; args[1] = calls.length; args[17] = timeoutMs;
    const { data } = this.call(`${calls.length} remote syscalls in ${tid}`, Op.syscalls, tid, args, -1, tail);
    return calls.map((_, i) => data.readBigInt64LE(i * 8));
  }
}

/** struct msghdr carrying `data` and one fd (SCM_RIGHTS); the buffers live as long as the result. */
function messageWithFd(data: Buffer, fd: number): { hdr: Buffer; keep: Buffer[] } {
  const iov = Buffer.alloc(16);
  iov.writeBigUInt64LE(libc.address(data), 0);
  iov.writeBigUInt64LE(BigInt(data.length), 8);
  const ctl = Buffer.alloc(24); // CMSG_SPACE(sizeof(int))
  ctl.writeBigUInt64LE(20n, 0); // CMSG_LEN(sizeof(int))
  ctl.writeInt32LE(SOL_SOCKET, 8);
  ctl.writeInt32LE(SCM_RIGHTS, 12);
  ctl.writeInt32LE(fd, 16);
  const hdr = Buffer.alloc(56);
  hdr.writeBigUInt64LE(libc.address(iov), 16);
  hdr.writeBigUInt64LE(1n, 24);
  hdr.writeBigUInt64LE(libc.address(ctl), 32);
  hdr.writeBigUInt64LE(BigInt(ctl.length), 40);
  return { hdr, keep: [iov, ctl] };
}

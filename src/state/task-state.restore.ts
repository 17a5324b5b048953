/** Putting back the per-process and per-thread state the kernel keeps. */
import {
  ptrace, kill, SIGKILL, PTRACE_O, PTRACE_O_TRACEFORK, PTRACE_O_TRACECLONE,
  SYS, PR, PRCTL_MM_MAP_SIZE, PR_SET_NAME, PR_SET_CHILD_SUBREAPER, PR_SET_THP_DISABLE, KSIGACTION_SIZE, SS_ONSTACK, SS_DISABLE, O_RDONLY, O_WRONLY, O_CLOEXEC, AT_FDCWD, setRlimit, SysError,
} from '../sys/index.js';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import type { ProcessImage, ThreadImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { MASK_WHILE_HELD } from './held-signals.js';
import { RemoteBatch } from '../inject/remote-batch.js';
import { TsnapError } from '../errors.js';
import { timerSetting } from '../files/anon-fds.js';
import { cloneIn } from '../restore/create-process.js';
import { DEAD_PROC_DIR } from '../proc/links.js';
import { FrozenTask } from '../freeze/frozen-task.js';
import { reapTraced } from '../freeze/frozen-process.js';

/** start_code..env_end, auxv and the executable in one PR_SET_MM_MAP. */
/** `closes`: fds of the task to close after it (restore --lazy's uffd: lazy-restore.ts), in the same list. */
export function restoreMm(rt: RemoteTask, p: ProcessImage, closes: readonly number[] = []): void {
  const mm = p.mm;
  const auxvAt = 1024;
  const pathAt = 2048;
  const path = Buffer.from(`${p.exe.path}\0`);
  const map = (exeFd: number): Buffer => {
    const b = Buffer.alloc(PRCTL_MM_MAP_SIZE);
    const fields = [mm.startCode, mm.endCode, mm.startData, mm.endData, mm.startBrk, mm.brk,
      mm.startStack, mm.argStart, mm.argEnd, mm.envStart, mm.envEnd];
    fields.forEach((v, i) => b.writeBigUInt64LE(BigInt(v), i * 8));
    b.writeBigUInt64LE(BigInt(rt.scratch + auxvAt), 88);
    b.writeUInt32LE(mm.auxv.length, 96);
    b.writeUInt32LE(exeFd, 100);
    return b;
  };
  if (rt.batchArea && pathAt + path.length <= rt.scratchSize && auxvAt + mm.auxv.length <= pathAt) {
    // One list instead of three stops: the exe opens at the lowest free fd,
    // which the struct names before the open ran (any other number stops the list).
    const exeFd = lowestFreeFd(rt.pid);
    rt.put(mm.auxv, auxvAt);
    const batch = new RemoteBatch(rt);
    batch.push(`open(${p.exe.path})`, SYS.openat, [BigInt(AT_FDCWD), rt.put(path, pathAt), O_RDONLY | O_CLOEXEC, 0], {
      value: BigInt(exeFd),
      mismatch: (got) => new TsnapError('internal', `the executable opened as fd ${got} in the new process, expected the lowest free fd ${exeFd}`),
    });
    batch.push('prctl(PR_SET_MM_MAP)', SYS.prctl, [PR.SET_MM, PR.PR_SET_MM_MAP, rt.put(map(exeFd), 0), PRCTL_MM_MAP_SIZE, 0]);
    batch.push(`close(${exeFd})`, SYS.close, [exeFd]);
    for (const fd of closes) batch.push(`close(${fd})`, SYS.close, [fd]);
    batch.flush();
    return;
  }
  const exeFd = rt.open(p.exe.path, O_RDONLY);
  try {
    rt.put(mm.auxv, auxvAt);
    const at = rt.put(map(exeFd), 0);
    rt.sc.check('prctl(PR_SET_MM_MAP)', SYS.prctl, PR.SET_MM, PR.PR_SET_MM_MAP, at, PRCTL_MM_MAP_SIZE, 0);
  } finally {
    rt.close(exeFd);
  }
  for (const fd of closes) rt.close(fd);
}

/** The fd number the task's next open gets: the lowest one not in its table. */
function lowestFreeFd(pid: number): number {
  const open = new Set(readdirSync(`/proc/${pid}/fd`).map(Number));
  let fd = 0;
  while (open.has(fd)) fd++;
  return fd;
}

const DELETED = ' (deleted)';

/**
 * chdir to the dumped cwd. A cwd that was removed under the process comes
 * back the same way: a directory made at its path, entered, and removed
 * again, so the process sits in a deleted directory of the same name
 * (the dump checked that its parent exists).
 */
function restoreCwd(rt: RemoteTask, p: ProcessImage, warn: (msg: string) => void): void {
  const cwd = p.cwd;
  const chdir = (path: string) => rt.sc.check(`chdir(${path})`, SYS.chdir, rt.put(Buffer.from(`${path}\0`)));
  if (!cwd.endsWith(DELETED)) { chdir(cwd); return; }
  if (DEAD_PROC_DIR.test(cwd)) { enterDeadProcDir(rt, chdir); return; }
  // An fd of the same deleted directory is restored already: the very same one.
  const same = p.cwdFile && p.fds.find((f) => f.kind === 'dir' && f.file?.dev === p.cwdFile!.dev && f.file.ino === p.cwdFile!.ino);
  if (same) { rt.sc.check(`fchdir(${same.fd})`, SYS.fchdir, same.fd); return; }
  let ghost = cwd.slice(0, -DELETED.length);
  if (existsSync(ghost)) {
    // The name is taken again: a ghost of another name, and a warning (restore check names it too).
    ghost = mkdtempSync(`${ghost}.tsnap-`);
    warn(`the deleted cwd ${cwd} exists again; the process is in a deleted directory named ${ghost} instead`);
  } else {
    mkdirSync(ghost, { mode: 0o700 });
  }
  try {
    chdir(ghost);
  } finally {
    rmdirSync(ghost);
  }
}

/**
 * A cwd in the /proc directory of a process that had exited: a child
 * cloned for the purpose, entered, killed and reaped by the process
 * itself (exit signal 0: no SIGCHLD is left behind). The pid differs; the
 * directory is as dead as the one at the dump.
 */
function enterDeadProcDir(rt: RemoteTask, chdir: (path: string) => unknown): void {
  ptrace.setOptions(rt.pid, PTRACE_O.TRACESYSGOOD | PTRACE_O.EXITKILL | PTRACE_O_TRACEFORK | PTRACE_O_TRACECLONE);
  const child = cloneIn(rt.sc, rt.scratch, 0, 0, null, 'clone3(a process to leave its /proc directory)');
  try {
    FrozenTask.adopt(child);
    chdir(`/proc/${child}`);
  } finally {
    kill(child, SIGKILL);
    reapTraced(child);
    rt.sc.check('wait4(the cwd\'s process)', SYS.wait4, child, 0, WALL, 0);
  }
}

const WALL = 0x40000000;

/** The audit login uid can only be set by the process itself, through /proc/self/loginuid. */
function restoreLoginuid(rt: RemoteTask, loginuid: number): void {
  if (Number(readFileSync(`/proc/${rt.pid}/loginuid`, 'utf8').trim()) === loginuid) return;
  const fd = rt.open('/proc/self/loginuid', O_WRONLY);
  try {
    const text = Buffer.from(String(loginuid));
    rt.sc.check('write(/proc/self/loginuid)', SYS.write, fd, rt.put(text), text.length);
  } finally {
    rt.close(fd);
  }
}

/** Where the cwd's path goes in the scratch page when chdir joins the state's list: after comm and 64 signal actions. */
const CWD_AT = 64 + 64 * KSIGACTION_SIZE;

export function restoreProcessState(rt: RemoteTask, p: ProcessImage, warn: (msg: string) => void): void {
  // One remote step for these and the signal actions (inject/remote-batch.ts):
  // each record's buffer at its own place in the scratch page.
  const batch = new RemoteBatch(rt);
  // A cwd that still exists joins the list (a stop fewer); a deleted one has its own steps.
  const cwdPath = Buffer.from(`${p.cwd}\0`);
  if (!p.cwd.endsWith(DELETED) && rt.batchArea && CWD_AT + cwdPath.length <= rt.scratchSize) {
    batch.push(`chdir(${p.cwd})`, SYS.chdir, [rt.put(cwdPath, CWD_AT)]);
  } else {
    restoreCwd(rt, p, warn);
  }
  batch.push('umask', SYS.umask, [p.umask]);
  batch.push('personality', SYS.personality, [p.personality]);
  if (p.oomScoreAdj !== undefined) {
    try {
      writeFileSync(`/proc/${rt.pid}/oom_score_adj`, String(p.oomScoreAdj));
    } catch (err) {
      throw new TsnapError('restoreFailed', `cannot set oom_score_adj ${p.oomScoreAdj} (${(err as NodeJS.ErrnoException).code}); lowering it needs CAP_SYS_RESOURCE`, err);
    }
  }
  const comm = Buffer.alloc(16);
  comm.write(p.comm.slice(0, 15));
  batch.push('prctl(PR_SET_NAME)', SYS.prctl, [PR_SET_NAME, rt.put(comm)]);

  let actAt = 64;
  for (const a of p.signals.actions) {
    if (a.handler === 0n && a.flags === 0n && a.mask === 0n) continue; // the default a fresh task has
    const act = Buffer.alloc(KSIGACTION_SIZE);
    act.writeBigUInt64LE(a.handler, 0);
    act.writeBigUInt64LE(a.flags, 8);
    act.writeBigUInt64LE(a.restorer, 16);
    act.writeBigUInt64LE(a.mask, 24);
    batch.push(`rt_sigaction(${a.signo})`, SYS.rt_sigaction, [a.signo, rt.put(act, actAt), 0, 8]);
    actAt += KSIGACTION_SIZE;
  }
  batch.flush();

  for (const l of p.rlimits) {
    try {
      setRlimit(rt.pid, l.resource, l.cur, l.max);
    } catch (err) {
      if (!(err instanceof SysError && err.code === 'EPERM')) throw err;
      // Raising a hard limit needs CAP_SYS_RESOURCE; keep what we may set.
      warn(`rlimit ${l.name}: hard limit ${l.max === 2n ** 64n - 1n ? 'unlimited' : l.max} cannot be restored without CAP_SYS_RESOURCE; kept the current one`);
    }
  }

  // pdeathsig, dumpable and no_new_privs come with the credentials (creds.ts):
  // a credential change resets the first two.
  if (p.prctl.childSubreaper) rt.sc.check('prctl(PR_SET_CHILD_SUBREAPER)', SYS.prctl, PR_SET_CHILD_SUBREAPER, 1);
  if (p.prctl.thpDisable) rt.sc.check('prctl(PR_SET_THP_DISABLE)', SYS.prctl, PR_SET_THP_DISABLE, 1, 0, 0, 0);
  // Each REGISTER command is its own bit of the mask the dump read.
  for (let bit = 0; bit < 31; bit++) {
    const cmd = 1 << bit;
    if ((p.prctl.membarrier ?? 0) & cmd) rt.sc.check(`membarrier(${cmd})`, SYS.membarrier, cmd, 0, 0);
  }
  if (p.loginuid !== undefined) restoreLoginuid(rt, p.loginuid);
}

export function restoreThreadState(rt: RemoteTask, t: ThreadImage): void {
  // One list (inject/remote-batch.ts): three or four remote syscalls were a stop each.
  const batch = new RemoteBatch(rt);
  if (!(t.sigaltstack.flags & SS_DISABLE)) {
    const ss = Buffer.alloc(24);
    ss.writeBigUInt64LE(t.sigaltstack.sp, 0);
    // SS_ONSTACK is a state, not a setting: the stack in use is implied by rsp.
    ss.writeInt32LE(t.sigaltstack.flags & ~SS_ONSTACK, 8);
    ss.writeBigUInt64LE(t.sigaltstack.size, 16);
    batch.push('sigaltstack', SYS.sigaltstack, [rt.put(ss), 0]);
  }
  // It returns the caller's tid, never an error: the runner's check passes it.
  batch.push('set_tid_address', SYS.set_tid_address, [t.clearChildTid]);
  if (t.robustList.head !== 0n) batch.push('set_robust_list', SYS.set_robust_list, [t.robustList.head, t.robustList.len]);
  if (t.rseq) batch.push('rseq', SYS.rseq, [t.rseq.pointer, t.rseq.size, 0, t.rseq.signature]);
  batch.flush();
}

const SIG_SETMASK = 2;
const SIGALRM = 14;
const SIGTRAP = 5;

/** Signals whose default action is to ignore them: setting SIG_DFL (or SIG_IGN) discards them from the queues. */
const KERNEL_IGNORED = new Set([17, 18, 23, 28]); // SIGCHLD SIGCONT SIGURG SIGWINCH

/**
 * Whether a signal pending at the dump can be queued as soon as the new
 * process exists, before anyone else's signals to its pid: it must stay
 * blocked while tsnap drives the task (held-signals.ts), and restoring the
 * image's action for it must not discard it (rt_sigaction to SIG_IGN, or to
 * SIG_DFL of a signal ignored by default, empties its queue).
 */
function queuesEarly(signo: number, p: ProcessImage): boolean {
  if (signo <= 0 || signo > 64 || (MASK_WHILE_HELD & (1n << BigInt(signo - 1))) === 0n) return false;
  const a = p.signals.actions.find((x) => x.signo === signo);
  const handler = a?.handler ?? 0n;
  if (handler === 1n) return false;
  return !(handler === 0n && KERNEL_IGNORED.has(signo));
}

/** The kernel takes a siginfo with a user or kernel si_code only from the task it is addressed to: each thread queues its own. */
function queueOne(rt: RemoteTask, tgid: number, info: Buffer, thread: boolean): void {
  const signo = info.readInt32LE(0);
  if (signo <= 0 || signo === 9 || signo === 19) return; // SIGKILL/SIGSTOP: not queued by hand
  const at = rt.put(info, 2048);
  if (!thread) rt.sc.check(`rt_sigqueueinfo(${signo})`, SYS.rt_sigqueueinfo, tgid, signo, at);
  else rt.sc.check(`rt_tgsigqueueinfo(${rt.pid}, ${signo})`, SYS.rt_tgsigqueueinfo, tgid, rt.pid, signo, at);
}

/**
 * The signals pending at the dump, process-wide and the main thread's,
 * queued right after the process (and its tree) exists: a signal sent to
 * the pid while the restore builds the process is sent later than these
 * were, and comes after them. The others wait for requeueSignals.
 */
export function queueEarlySignals(rt: RemoteTask, p: ProcessImage): void {
  for (const info of p.signals.sharedPending) if (queuesEarly(info.readInt32LE(0), p)) queueOne(rt, rt.pid, info, false);
  for (const info of p.threads[0].pendingSignals) if (queuesEarly(info.readInt32LE(0), p)) queueOne(rt, rt.pid, info, true);
}

/**
 * The rest of the signals that were pending at the dump, queued again with
 * their siginfo (sender, value, code): the other threads' (they exist only
 * now), the fault signals and SIGTRAP (open while tsnap drives the task),
 * and those the restored actions would have discarded. Signals sent to the
 * new process meanwhile stay queued (held-signals.ts); taking them out to
 * queue them behind these would reorder the ones that keep arriving, which
 * is worse.
 * Every thread first blocks every signal, so that nothing is delivered
 * while tsnap still drives the task with remote syscalls; the real masks are set with the registers, and the signals the
 * program does not block are delivered as it resumes.
 */
export function requeueSignals(leader: RemoteTask, tgid: number, threads: { rt: RemoteTask; image: ThreadImage }[], p: ProcessImage): void {
  // With SIGTRAP blocked, an int3 (the stub's trap after a syscall) is
  // forced through: the kernel resets SIGTRAP's action to SIG_DFL, and the
  // handler (or SIG_IGN) restored earlier would be lost (ZDTM sigtrap01).
  // From the blocking call on, remote syscalls stop at their syscall exit.
  leader.sc.trapAfter = false;
  for (const th of threads) th.rt.sc.trapAfter = false;
  const all = Buffer.alloc(8, 0xff);
  for (const th of threads) th.rt.sc.check('rt_sigprocmask(block all)', SYS.rt_sigprocmask, SIG_SETMASK, th.rt.put(all, 2048), 0, 8);
  for (const info of p.signals.sharedPending) if (!queuesEarly(info.readInt32LE(0), p)) queueOne(leader, tgid, info, false);
  for (const [i, th] of threads.entries()) {
    for (const info of th.image.pendingSignals) if (i > 0 || !queuesEarly(info.readInt32LE(0), p)) queueOne(th.rt, tgid, info, true);
  }
}

/**
 * SIGTRAP's action set once more, as the last remote call before the stub
 * goes: each int3 that ends a remote step (the stub's, a syscall list's)
 * is a forced SIGTRAP, and the kernel resets the action of a forced signal
 * that is ignored or blocked to SIG_DFL (a SIG_IGN came back as SIG_DFL).
 * Remote syscalls stop at their syscall exit by now (requeueSignals): this
 * one is no int3.
 */
export function restoreTrapAction(rt: RemoteTask, p: ProcessImage): void {
  const a = p.signals.actions.find((x) => x.signo === SIGTRAP);
  if (!a || (a.handler === 0n && a.flags === 0n && a.mask === 0n)) return;
  const act = Buffer.alloc(KSIGACTION_SIZE);
  act.writeBigUInt64LE(a.handler, 0);
  act.writeBigUInt64LE(a.flags, 8);
  act.writeBigUInt64LE(a.restorer, 16);
  act.writeBigUInt64LE(a.mask, 24);
  rt.sc.check(`rt_sigaction(${SIGTRAP})`, SYS.rt_sigaction, SIGTRAP, rt.put(act, 0), 0, 8);
}

/** Armed interval timers (alarm, setitimer), with the time they had left at the dump. */
export function restoreItimers(rt: RemoteTask, p: ProcessImage): void {
  const alrmIgnored = p.signals.actions.some((a) => a.signo === SIGALRM && a.handler === 1n);
  for (const t0 of p.itimers ?? []) {
    let t = t0;
    if (t.valueUs === 0) {
      // Expired, its SIGALRM not yet taken: the kernel re-arms a periodic ITIMER_REAL only as that
      // signal is taken. Armed for one period: the SIGALRM is in the image's pending list, or came
      // after the dump read that list (it went with the killed process, as any signal then).
      // An ignored SIGALRM is never taken: such a timer had stopped for good, and stays so.
      if (t.which !== 0 || alrmIgnored) continue;
      t = { ...t, valueUs: t.intervalUs };
    }
    const v = Buffer.alloc(32);
    v.writeBigInt64LE(BigInt(Math.floor(t.intervalUs / 1e6)), 0);
    v.writeBigInt64LE(BigInt(t.intervalUs % 1e6), 8);
    v.writeBigInt64LE(BigInt(Math.floor(t.valueUs / 1e6)), 16);
    v.writeBigInt64LE(BigInt(t.valueUs % 1e6), 24);
    rt.sc.check(`setitimer(${t.which})`, SYS.setitimer, t.which, rt.put(v, 2048), 0);
  }
}

const PR_TIMER_CREATE_RESTORE_IDS = 77;
const SIGEV_NOTIFY = { signal: 0, none: 1, thread: 4 } as const;

/**
 * POSIX timers with their original ids: PR_TIMER_CREATE_RESTORE_IDS makes
 * timer_create take the id it is handed (Linux 6.17+), and each is armed
 * with the time it had left. Created by the leader: timers belong to the
 * process; a thread-directed one names its (restored) thread.
 */
export function restorePosixTimers(rt: RemoteTask, p: ProcessImage, tidOf: (tid: number) => number): void {
  const timers = p.posixTimers ?? [];
  if (timers.length === 0) return;
  const r = rt.sc.call(SYS.prctl, PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0);
  if (r < 0n) {
    throw new TsnapError('kernel', `process ${p.pid} has ${timers.length} POSIX timer(s) and this kernel cannot create them with their ids (PR_TIMER_CREATE_RESTORE_IDS needs Linux 6.17+)`);
  }
  try {
    for (const t of timers) {
      const sev = Buffer.alloc(64);
      sev.writeBigUInt64LE(BigInt.asUintN(64, t.value), 0);
      sev.writeInt32LE(t.signo, 8);
      sev.writeInt32LE(SIGEV_NOTIFY[t.notify], 12);
      if (t.notify === 'thread') sev.writeInt32LE(tidOf(t.tid), 16);
      const idAt = rt.put(Buffer.from(Int32Array.of(t.id).buffer), 2112);
      rt.sc.check(`timer_create(id ${t.id})`, SYS.timer_create, t.clockid, rt.put(sev, 2048), idAt);
      const id = rt.get(4, 2112).readInt32LE(0);
      if (id !== t.id) throw new TsnapError('restoreFailed', `POSIX timer ${t.id} came back as ${id}`);
      const its = timerSetting(t);
      if (its) rt.sc.check(`timer_settime(${t.id})`, SYS.timer_settime, t.id, 0, rt.put(its, 2176), 0);
    }
  } finally {
    rt.sc.call(SYS.prctl, PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0);
  }
}

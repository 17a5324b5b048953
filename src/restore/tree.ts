/**
 * Rebuilding a process tree inside the restored root: every child forked
 * where its parent forked it (clone3 with its pid), sessions and groups as
 * they were, exited children made again as zombies with their status.
 */
import { ptrace, SYS, SIGKILL, kill, ProcMem, PTRACE_O, PTRACE_O_TRACEFORK, PTRACE_O_TRACECLONE, SIGCHLD, CLONE_FILES, setRlimit } from '../sys/index.js';
import type { Image } from '../image/image-reader.js';
import { FrozenTask } from '../freeze/frozen-task.js';
import { cloneIn } from './create-process.js';
import { RemoteTask } from '../inject/remote-task.js';
import { restoreCreds } from './creds.js';
import { RemoteSyscaller } from '../inject/remote-syscall.js';
import { reapTraced } from '../freeze/frozen-process.js';
import { TsnapError } from '../errors.js';
import { readStat } from '../proc/index.js';
import type { ProcessImage, TreeMember } from '../../formats/schema.js';

const RLIMIT_CORE = 4;

/** One process to rebuild, as its image describes it. */
export interface PlannedMember {
  chain: Image[];
  p: ProcessImage;
  children: PlannedMember[];
  /** Children that had exited, not yet reaped by this process. */
  zombies: TreeMember[];
  /** It shares its parent's fd table (forked with CLONE_FILES). */
  filesShared?: boolean;
}

/**
 * Forks every child of `parent` inside it (clone3 with set_tid, as the
 * original fork did), depth first, each right after its parent has its
 * session and group, so it inherits them as it did originally. Returns the
 * setpgid calls that must wait until every process exists (a group whose
 * leader comes later in the tree).
 */
export function createChildren(parent: PlannedMember, rtOf: Map<PlannedMember, RemoteTask>, stubAddr: number, newPid: boolean, created: { pid: number; leader: boolean }[], onSession: (m: PlannedMember, rt: RemoteTask) => void): { deferred: [RemoteTask, number][]; pidOf: Map<number, number> } {
  const deferred: [RemoteTask, number][] = [];
  const prt = rtOf.get(parent)!;
  /** Original pid -> pid restored (the same, but with --new-pid). */
  const pids = new Map<number, number>();
  const inTree = new Set<number>();
  const collect = (m: PlannedMember) => { inTree.add(m.p.pid); m.children.forEach(collect); };
  collect(parent);
  const walk = (m: PlannedMember, rt: RemoteTask) => {
    setSessionAndGroup(m, rt, deferred, pids, inTree);
    onSession(m, rt);
    pids.set(m.p.pid, rt.pid);
    if (m.children.length || m.zombies.length) ptrace.setOptions(rt.pid, PTRACE_O.TRACESYSGOOD | PTRACE_O.EXITKILL | PTRACE_O_TRACEFORK | PTRACE_O_TRACECLONE);
    for (const c of m.children) {
      const child = forkChild(rt, newPid ? null : c.p.pid, `clone3(process ${c.p.pid})`, stubAddr, created, c.filesShared ? CLONE_FILES : 0);
      const crt = new RemoteTask(child.sc, child.mem);
      crt.scratch = prt.scratch;
      crt.scratchSize = prt.scratchSize;
      crt.batchArea = prt.batchArea;
      rtOf.set(c, crt);
      walk(c, crt);
    }
    for (const z of m.zombies) {
      // Its pid as made again: pidfds of it are opened on it with the files.
      pids.set(z.pid, makeZombie(rt, z, stubAddr, newPid, created, (pgid) => pids.get(pgid)));
    }
  };
  walk(parent, prt);
  return { deferred, pidOf: pids };
}

/**
 * Forks a child inside a restored process (the fork the original made):
 * clone3 with its pid, exit signal SIGCHLD, our tracee from its first
 * instruction. It is a copy of its parent, so the stub is at the same
 * address and serves it too.
 */
function forkChild(parent: RemoteTask, pid: number | null, what: string, stubAddr: number, created: { pid: number; leader: boolean }[], flags = 0): { sc: RemoteSyscaller; mem: ProcMem } {
  const child = cloneIn(parent.sc, parent.scratch, flags, SIGCHLD, pid, what);
  created.push({ pid: child, leader: true });
  const task = FrozenTask.adopt(child);
  ptrace.setOptions(child, PTRACE_O.TRACESYSGOOD | PTRACE_O.EXITKILL);
  const mem = new ProcMem(child, true);
  const sc = new RemoteSyscaller(task, mem, stubAddr);
  sc.trapAfter = true; // the stub's `syscall; int3`
  return { sc, mem };
}

/**
 * A child that had exited but was not reaped at the dump: forked again in
 * its parent with its pid, given its session and group, and made to end
 * the way it did (exit_group with its code, or its fatal signal without a
 * core), so that the parent finds it waiting with the same status.
 */
function makeZombie(parent: RemoteTask, z: TreeMember, stubAddr: number, newPid: boolean, created: { pid: number; leader: boolean }[], pidOf: (pid: number) => number | undefined): number {
  const info = z.zombie!;
  const { sc, mem } = forkChild(parent, newPid ? null : z.pid, `clone3(exited process ${z.pid})`, stubAddr, created);
  const pid = sc.task.pid;
  try {
    if (info.sid === z.pid) sc.check('setsid', SYS.setsid);
    else if (info.pgid === z.pid) sc.check('setpgid(0, 0)', SYS.setpgid, 0, 0);
    else {
      const leader = pidOf(info.pgid);
      if (leader !== undefined) sc.call(SYS.setpgid, 0, leader);
    }
    const sig = info.status & 0x7f;
    // prlimit64 on another user's process needs CAP_SYS_RESOURCE: before the credentials.
    if (sig !== 0) setRlimit(pid, RLIMIT_CORE, 0n, 0n);
    if (info.creds) {
      const rt = new RemoteTask(sc, mem);
      rt.scratch = parent.scratch;
      rt.scratchSize = parent.scratchSize;
      rt.batchArea = parent.batchArea;
      restoreCreds(rt, pid, info.creds);
    }
    if (sig === 0) {
      sc.begin(SYS.exit_group, (info.status >> 8) & 0xff);
      reapTraced(pid); // our view of its exit; its parent's comes after
      return pid;
    }
    if (sig === SIGKILL) {
      // SIGKILL needs no action set (it cannot have one) and kills a traced
      // task at once: sent from here, our view of the exit reaped, the
      // parent's is what remains.
      kill(pid, SIGKILL);
      reapTraced(pid);
      return pid;
    }
    const dfl = Buffer.alloc(32);
    mem.write(dfl, 0, 32, parent.scratch);
    sc.check(`rt_sigaction(${sig}, SIG_DFL)`, SYS.rt_sigaction, sig, parent.scratch, 0, 8);
    mem.write(Buffer.alloc(8), 0, 8, parent.scratch);
    sc.check('rt_sigprocmask(unblock all)', SYS.rt_sigprocmask, 2, parent.scratch, 0, 8);
    // Stopped at the syscall's exit, not at the stub's int3: on the way to it
    // the task would take the signal now, and it must stay pending for the detach.
    sc.trapAfter = false;
    sc.check(`kill(self, ${sig})`, SYS.kill, pid, sig);
    // Let go: the pending fatal signal is delivered as it returns to user mode.
    ptrace.detach(pid, 0);
    for (let i = 0; i < 1000; i++) {
      try { if (readStat(pid).state === 'Z') return pid; } catch { return pid; }
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    }
    throw new TsnapError('restoreFailed', `the exited process ${z.pid} did not end again with signal ${sig}`);
  } finally {
    mem.close();
  }
}

/**
 * setsid for a session leader, setpgid for a group leader or a member of a
 * group of the tree. Sessions and groups led from outside the tree are those
 * of tsnap restore (as a shell job's are).
 */
function setSessionAndGroup(m: PlannedMember, rt: RemoteTask, deferred: [RemoteTask, number][], existing: Map<number, number>, inTree: Set<number>): void {
  if (m.p.sid === m.p.pid) rt.sc.check('setsid', SYS.setsid);
  else if (m.p.pgid === m.p.pid) rt.sc.check('setpgid(0, 0)', SYS.setpgid, 0, 0);
  if (m.p.pgid !== m.p.pid && inTree.has(m.p.pgid)) {
    const current = Number(rt.sc.check('getpgid', SYS.getpgid, 0));
    const leader = existing.get(m.p.pgid);
    if (leader === undefined) deferred.push([rt, m.p.pgid]);
    else if (current !== leader) rt.sc.check(`setpgid(0, ${leader})`, SYS.setpgid, 0, leader);
  }
}

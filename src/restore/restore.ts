/**
 * `tsnap restore`: recreate a process from an image and let it run on.
 * All or nothing: until the last step the new process is ours, stopped;
 * any failure kills it, so nothing half-built ever runs.
 */
import { openSync, closeSync, writeFileSync } from 'node:fs';
import type { ChildProcess, StdioOptions } from 'node:child_process';
import { join } from 'node:path';
import { ptrace, SYS, EINTR, ERESTART_RESTARTBLOCK, SIGKILL, kill, WaitStatus, ProcMem, PTRACE_O, PTRACE_O_TRACEFORK, PTRACE_O_TRACECLONE, SIGCHLD, CLONE_FILES, setRlimit } from '../sys/index.js';

const RLIMIT_CORE = 4;
import { readChain, type Image } from '../image/image-reader.js';
import { readReg, writeReg, FrozenTask } from '../freeze/frozen-task.js';
import { createProcess, cloneIn, type NewProcess } from './create-process.js';
import { RemoteTask } from '../inject/remote-task.js';
import { installStub, clearHelperMappings, placeSpecialMappings, mapVmas, finishProtections, lockVmas, installGuards, STUB_SIZE } from './address-space.js';
import { fillPages } from './page-filler.js';
import { checkRestored } from './self-check.js';
import { fdTableDiff } from '../files/fd-table.js';
import { finishFiles } from './fds.js';
import { resumeConnections, abandonConnections } from '../files/tcp.js';
import { closedTcp } from '../files/socket.js';
import { restoreMm, restoreProcessState, restoreThreadState, requeueSignals, restoreItimers, restorePosixTimers } from './task-state.js';
import { FdRestorer } from './fds.js';
import { SysvSegments } from './sysv-shm.js';
import { withInflight } from '../files/scm-rights.js';
import { restoreAllCreds, restoreCreds } from './creds.js';
import { createMemfdObject } from '../files/fifo-memfd.js';
import { PtyRestorer, imagePtys } from '../files/tty.js';
import { mappedGhostOf } from '../files/ghost-map.js';
import { restoreAioRing } from '../files/aio.js';
import { createThreads, type RestoredThread } from './threads.js';
import { RemoteSyscaller } from '../inject/remote-syscall.js';
import { isTreeImage, readTreeManifest, checkMember } from '../image/tree-manifest.js';
import { isSpecial, vmaKind } from './layout-plan.js';
import { reapTraced } from '../freeze/frozen-process.js';
import { preflight } from './preflight.js';
import { pausePoint } from '../fault-points.js';
import { checkUnreadChunks } from '../image/unread-chunks.js';
import { TsnapError, asTsnapError } from '../errors.js';
import type { ThreadImage, ProcessImage, VmaImage, TreeMember } from '../../formats/schema.js';
import { readStat } from '../proc/index.js';

export interface RestoreOptions {
  dir: string;
  /** Restore under a fresh pid when the original one is taken (or always). */
  newPid?: boolean;
  /** Files for the restored process's stdin/stdout/stderr instead of tsnap's own. */
  stdin?: string;
  stdout?: string;
  stderr?: string;
  pidfile?: string;
  /**
   * Compare the rebuilt processes with their images before they run
   * (self-check.ts): 'warn' (the default) names each difference as a
   * warning, 'strict' fails the restore on any, 'off' skips the check.
   */
  check?: 'warn' | 'strict' | 'off';
  /** Established TCP connections come back closed (as after a reset) instead of repaired. */
  tcpClose?: boolean;
  /** Warnings (stale pids, limits that could not be raised), told once the restore has succeeded. */
  warn?: (msg: string) => void;
  /** Bytes of memory written so far and in all (per process of a tree). */
  onProgress?: (p: { bytes: number; total: number; pid: number }) => void;
}

export interface RestoreStats {
  restoreUs: number;
  pagesRestored: number;
  bytesRestored: number;
  throughputMiBps: number;
}

export interface RestoreResult {
  pid: number;
  originalPid: number;
  /** Every restored process (a tree restores several), root first. */
  pids: { original: number; pid: number }[];
  stats: RestoreStats;
  warnings: string[];
}

/** Registers the thread resumes with: the interrupted syscall is re-entered. */
export function resumeRegisters(t: ThreadImage): Buffer {
  const regs = Buffer.from(t.regs);
  const r = t.syscallRestart;
  if (r) {
    if (r.code === ERESTART_RESTARTBLOCK) {
      // The kernel's restart block (remaining sleep time) did not survive:
      // the syscall returns EINTR, as after a signal.
      writeReg(regs, 'rax', -EINTR);
    } else {
      writeReg(regs, 'rax', r.nr);
      writeReg(regs, 'rip', readReg(regs, 'rip') - 2n);
    }
  }
  writeReg(regs, 'orig_rax', -1n);
  return regs;
}

/** One process being rebuilt. */
interface Member {
  chain: Image[];
  p: ProcessImage;
  /** Set once the process exists. */
  rt: RemoteTask | null;
  threads: RestoredThread[];
  children: Member[];
  /** Children that had exited, not yet reaped by this process. */
  zombies: TreeMember[];
  /** It shares its parent's fd table (forked with CLONE_FILES). */
  filesShared?: boolean;
}

function loadMembers(dir: string): Member[] {
  if (!isTreeImage(dir)) {
    const chain = readChain(dir);
    return [{ chain, p: needProcess(chain[0], dir), rt: null, threads: [], children: [], zombies: [] }];
  }
  const manifest = readTreeManifest(dir);
  if (manifest.contents !== 'dump') {
    throw new TsnapError('badImage', `${dir} is a tree pre-dump (memory only); restore the final image of its chain (tsnap dump --tree --parent ${dir})`);
  }
  const byPid = new Map<number, Member>();
  const live = manifest.processes.filter((m) => !m.zombie);
  const members = live.map((m) => {
    const sub = join(dir, m.dir);
    const chain = readChain(sub);
    const member: Member = { chain, p: needProcess(chain[0], sub), rt: null, threads: [], children: [], zombies: [], filesShared: !!m.filesShared };
    checkMember(m, chain[0].inventory, sub);
    if (member.p.pid !== m.pid) throw new TsnapError('badImage', `${sub} holds process ${member.p.pid}, the tree manifest says ${m.pid}`);
    byPid.set(m.pid, member);
    return member;
  });
  manifest.processes.forEach((m, i) => {
    if (i === 0) return;
    const parent = byPid.get(m.ppid);
    if (!parent) throw new TsnapError('badImage', `${dir}: process ${m.pid} has parent ${m.ppid}, which is not in the tree`);
    if (m.zombie) parent.zombies.push(m);
    else parent.children.push(byPid.get(m.pid)!);
  });
  if (manifest.processes[0]?.pid !== manifest.root) throw new TsnapError('badImage', `${dir}: the tree manifest does not start with its root`);
  return members;
}

/** The image as restore --tcp-close rebuilt it: its connections as closed sockets. */
function withoutTcp(p: ProcessImage): ProcessImage {
  return { ...p, fds: p.fds.map((f) => (f.socket?.tcp ? { ...f, socket: closedTcp(f.socket) } : f)) };
}

function needProcess(img: Image, dir: string): ProcessImage {
  if (!img.process) {
    throw new TsnapError('badImage', `${dir} is a pre-dump (memory only, taken while the process ran); restore the final image of its chain (tsnap dump --parent ${dir})`);
  }
  return img.process;
}

export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  const t0 = process.hrtime.bigint();
  const warnings: string[] = [];
  // Told once the restore succeeded: a refused or failed one reports its error alone.
  const warn = (m: string) => { warnings.push(m); };
  const members = loadMembers(opts.dir);
  const tree = isTreeImage(opts.dir);
  const root = members[0];
  const newPid = !!opts.newPid;
  for (const m of members) preflight(m.chain[0], m.p, newPid);
  // The same memory plan as below (shared memory is filled once, by its first process).
  const planned = new Map<string, { pid: number; v: VmaImage }>();
  for (const m of members) {
    const imports = sharedImports(m.p, planned, 0);
    checkUnreadChunks(m.chain, m.p.mm.vmas.filter((v) => v.dumped && !imports.has(v.start)).map((v) => ({ start: v.start, end: v.end })));
  }

  const stdio = openStdio(opts);
  let helper: ChildProcess | null = null;
  /** Every task created, for the cleanup of a failed restore. */
  const created: { pid: number; leader: boolean }[] = [];
  let step = 'create the process';
  let fdr: FdRestorer | null = null;
  let ptys: PtyRestorer | null = null;
  let sysv: SysvSegments | null = null;
  let pages = 0;
  let bytes = 0;
  try {
    const made = await createProcess(newPid ? null : root.p.pid, stdio.options);
    helper = made.helper;
    const proc: NewProcess = made.proc;
    created.push({ pid: proc.pid, leader: true });
    helper.kill('SIGKILL');
    root.rt = new RemoteTask(proc.sc, proc.mem);
    step = 'check the CPU state layout';
    const xlen = ptrace.getXstate(proc.pid).length;
    for (const m of members) {
      for (const t of m.p.threads) {
        if (xlen !== t.xstate.length) {
          throw new TsnapError('kernel', `this CPU's XSAVE area is ${xlen} bytes, the image's ${t.xstate.length}; restore on the same kind of CPU`);
        }
      }
    }
    /** Where each memfd of the tree was recreated: process and fd. */
    const memfdAt = new Map<string, { pid: number; fd: number }>();
    step = 'prepare the address space';
    const stub = installStub(root.rt, members.map((m) => m.p));
    clearHelperMappings(root.rt, stub);
    // Above every fd number of the tree: a pty made before the fds waits there.
    ptys = new PtyRestorer(members.map((m) => m.p.fds), Math.max(2, ...members.flatMap((m) => withInflight(m.p.fds).map((f) => f.fd))) + 1);
    // A session leader takes its controlling terminal before it forks: members inherit it.
    const onSession = (m: Member) => { step = `restore the controlling terminal of ${m.p.pid}`; ptys!.takeCtty(m.rt!, m.p, warn); };
    /** Original pid -> restored pid of every process of the tree, zombies included. */
    let treePids = new Map<number, number>();
    if (!tree) {
      if (root.p.sid === root.p.pid) root.rt.sc.check('setsid', SYS.setsid);
      onSession(root);
    } else {
      step = 'create the process tree';
      const { deferred, pidOf } = createChildren(root, stub.addr, newPid, created, onSession);
      treePids = pidOf;
      for (const [m, pgid] of deferred) m.rt!.sc.check(`setpgid(0, ${pidOf.get(pgid)})`, SYS.setpgid, 0, pidOf.get(pgid)!);
      if (newPid) warn('processes got new pids: what they recorded of each other\'s pids is stale');
      pausePoint('restore-tree-created');
    }
    step = 'take or make the SysV shm segments';
    sysv = new SysvSegments(members.flatMap((m) => m.p.sysvShm ?? []));
    sysv.prepare();
    // Made before the memory: a deleted file mapped and open as an fd is one file (ghost-map.ts).
    fdr = new FdRestorer(members.map((m) => m.p.fds), memfdAt, warn, { tcpClose: opts.tcpClose, ptys: ptys! });
    for (const m of members) fdr.ghosts.addMapped(m.p.mappedGhosts ?? []);
    const sharedFrom = new Map<string, { pid: number; v: VmaImage }>();
    for (const m of members) {
      const rt = m.rt!;
      step = `rebuild the address space of ${m.p.pid}`;
      placeSpecialMappings(rt, m.p, stub);
      const imports = sharedImports(m.p, sharedFrom, rt.pid);
      const floor = Math.max(2, ...withInflight(m.p.fds).map((f) => f.fd)) + 1;
      for (const obj of m.p.memfds ?? []) {
        const key = `${obj.dev}:${obj.ino}`;
        if (!memfdAt.has(key)) memfdAt.set(key, { pid: rt.pid, fd: createMemfdObject(rt, obj, floor) });
      }
      const fileAt = new Map<number, string>();
      for (const v of m.p.mm.vmas) {
        const at = v.file && v.path.startsWith('/memfd:') ? memfdAt.get(`${v.file.dev}:${v.file.ino}`) : undefined;
        if (at) fileAt.set(v.start, `/proc/${at.pid}/fd/${at.fd}`);
        const ghost = mappedGhostOf(m.p.mappedGhosts, v);
        if (ghost) fileAt.set(v.start, fdr.ghosts.pathForMapping(ghost, v.start, warn));
      }
      const fixProt = mapVmas(rt, m.p, imports, fileAt, sysv);
      step = `write the memory of ${m.p.pid}`;
      const filled = await fillPages(rt.pid, m.chain, m.p.mm.vmas.filter((v) => v.dumped && !imports.has(v.start)).map((v) => ({ start: v.start, end: v.end })), rt.sc,
        opts.onProgress ? (bytes, total) => opts.onProgress!({ bytes, total, pid: m.p.pid }) : undefined);
      pages += filled.pages;
      bytes += filled.bytes;
      for (const r of m.p.aioRings ?? []) restoreAioRing(rt, r);
      installGuards(rt, m.p.mm.vmas);
      finishProtections(rt, fixProt);
      lockVmas(rt, m.p.mm.vmas);
      step = `restore the mm fields of ${m.p.pid} (PR_SET_MM_MAP)`;
      restoreMm(rt, m.p);
    }
    const pidNow = new Map([...treePids, ...members.map((m): [number, number] => [m.p.pid, m.rt!.pid])]);
    fdr.pidNow = (pid) => {
      const now = pidNow.get(pid);
      // The dump refuses pidfds of processes it does not hold: never open one on a stranger.
      if (now === undefined) throw new TsnapError('badImage', `${opts.dir}: a pidfd names process ${pid}, which is not in the image`);
      return now;
    };
    await fdr.prepare();
    for (const m of members) {
      step = `restore the files of ${m.p.pid}`;
      fdr.createFiles(m.rt!, m.p.fds);
    }
    for (const m of members) fdr.connectUnix(m.rt!, m.p.fds);
    for (const m of members) fdr.registerEpolls(m.rt!, m.p.fds);
    for (const m of members) {
      step = `queue the files in flight of ${m.p.pid} again`;
      fdr.requeueInflight(m.rt!, m.p.fds, (pid) => pidNow.get(pid) ?? pid);
    }
    for (const m of members) fdr.closeOthers(m.rt!, m.p.fds);
    step = 'finish the terminals';
    ptys.finish(members.map((m) => ({ rt: m.rt!, p: m.p })), (id) => members.find((x) => x.p.pid === id)?.rt?.pid ?? id, warn);
    // Every fd is open: the deleted files made again are deleted again.
    fdr.ghosts.removeAll();
    sysv.finish();
    fdr.releaseLocal();
    for (const m of members) {
      const rt = m.rt!;
      step = `restore the state of ${m.p.pid}`;
      restoreProcessState(rt, m.p, warn);
      step = `create the threads of ${m.p.pid}`;
      const tids: number[] = [];
      const others = createThreads(rt, m.p.threads.slice(1), newPid, tids);
      for (const tid of tids) created.push({ pid: tid, leader: false });
      m.threads = [{ image: m.p.threads[0], rt }, ...others];
      if (newPid && m.threads.length > 1) warn(`threads of ${m.p.pid} got new tids: the program's own record of them (pthread tid caches) still holds the old ones`);
      step = `restore the thread state of ${m.p.pid}`;
      for (const th of m.threads) restoreThreadState(th.rt, th.image);
      step = `queue the pending signals of ${m.p.pid}`;
      requeueSignals(rt, rt.pid, m.threads, m.p.signals.sharedPending);
      restoreItimers(rt, m.p);
      const tidOf = new Map(m.threads.map((th) => [th.image.tid, th.rt.pid]));
      restorePosixTimers(rt, m.p, (tid) => tidOf.get(tid) ?? rt.pid);
    }
    // Owners name processes and threads of the whole tree: once they all exist.
    const idNow = new Map<number, number>();
    for (const [original, now] of treePids) idNow.set(original, now);
    for (const m of members) {
      idNow.set(m.p.pid, m.rt!.pid);
      for (const th of m.threads) idNow.set(th.image.tid, th.rt.pid);
    }
    for (const m of members) {
      step = `finish the files of ${m.p.pid}`;
      fdr.createLate(m.rt!, m.p.fds, (id) => idNow.get(id));
      finishFiles(m.rt!, m.p.fds, (id) => idNow.get(id) ?? id);
    }
    // Last of all that needs privilege: afterwards a process may be an ordinary user's.
    for (const m of members) {
      step = `restore the credentials of ${m.p.pid}`;
      restoreAllCreds(m.rt!, m.p, m.threads, warn);
    }
    for (const m of members) {
      step = `remove the restore stub from ${m.p.pid}`;
      m.rt!.sc.check('munmap(stub)', SYS.munmap, stub.addr, STUB_SIZE);
      step = `set the registers of ${m.p.pid}`;
      for (const th of m.threads) {
        const tid = th.rt.pid;
        ptrace.setRegs(tid, resumeRegisters(th.image));
        ptrace.setXstate(tid, th.image.xstate);
        ptrace.setSigmask(tid, th.image.sigmask);
      }
    }
    if ((opts.check ?? 'warn') !== 'off') {
      step = 'check the restored processes against their images';
      const diffs = members.flatMap((m) => [...checkRestored(opts.tcpClose ? withoutTcp(m.p) : m.p, m.rt!.pid, {
        newPid, threads: m.threads.map((th) => ({ tid: th.rt.pid, sigmask: th.image.sigmask })), idNow: (id) => idNow.get(id) ?? id, ptys: imagePtys(members.map((x) => x.p)),
      }), ...fdTableDiff(m.rt!.pid, m.children.map((c) => ({ pid: c.rt!.pid, shared: !!c.filesShared })))].map((d) => `restore check of ${m.p.pid}: ${d}`));
      if (diffs.length && opts.check === 'strict') {
        throw new TsnapError('restoreFailed', `the restored process differs from its image (${diffs.length} differences; first: ${diffs[0]}); nothing was started`);
      }
      for (const d of diffs) warn(d);
    }
    for (const m of members) m.rt!.mem.close();
    if (opts.pidfile) writeFileSync(opts.pidfile, `${proc.pid}\n`, { mode: 0o644 });
    // Only now may the connections speak: nothing after this can fail.
    step = 'resume the TCP connections';
    resumeConnections();
    step = 'start the processes';
    pausePoint('restore-before-start');
    // Children before parents, other threads before their leader: the one a
    // parent waits for goes last.
    for (const m of [...members].reverse()) {
      // Queued while still traced: it takes effect before the first instruction.
      if (m.p.stopSignal) kill(m.rt!.pid, m.p.stopSignal);
      for (const th of m.threads.slice(1)) ptrace.detach(th.rt.pid);
      ptrace.detach(m.rt!.pid);
    }
    const restoreUs = Number(process.hrtime.bigint() - t0) / 1000;
    for (const w of warnings) opts.warn?.(w);
    return {
      pid: proc.pid,
      originalPid: root.p.pid,
      pids: members.map((m) => ({ original: m.p.pid, pid: m.rt!.pid })),
      warnings,
      stats: {
        restoreUs,
        pagesRestored: pages,
        bytesRestored: bytes,
        throughputMiBps: bytes / (1 << 20) / (restoreUs / 1e6),
      },
    };
  } catch (err) {
    (fdr as FdRestorer | null)?.ghosts.removeAll();
    (sysv as SysvSegments | null)?.abort();
    (fdr as FdRestorer | null)?.releaseLocal();
    abandonConnections(members.flatMap((m) => m.p.fds));
    for (const c of created) if (c.leader) { try { kill(c.pid, SIGKILL); } catch { /* gone */ } }
    // Traced threads stay zombies until reaped, and hold back their leader's report.
    for (const c of created) if (!c.leader) reapTraced(c.pid);
    for (const c of [...created].reverse()) if (c.leader) reapTraced(c.pid);
    for (const m of members) { try { m.rt?.mem.close(); } catch { /* closed */ } }
    helper?.kill('SIGKILL');
    const e = asTsnapError(err, `restore from ${opts.dir}`);
    if (e.kind === 'internal') throw new TsnapError('restoreFailed', `restore failed while trying to ${step}: ${e.message}`, err);
    throw e;
  } finally {
    stdio.close();
  }
}

/**
 * Forks every child of `parent` inside it (clone3 with set_tid, as the
 * original fork did), depth first, each right after its parent has its
 * session and group, so it inherits them as it did originally. Returns the
 * setpgid calls that must wait until every process exists (a group whose
 * leader comes later in the tree).
 */
function createChildren(parent: Member, stubAddr: number, newPid: boolean, created: { pid: number; leader: boolean }[], onSession: (m: Member) => void): { deferred: [Member, number][]; pidOf: Map<number, number> } {
  const deferred: [Member, number][] = [];
  const prt = parent.rt!;
  /** Original pid -> pid restored (the same, but with --new-pid). */
  const pids = new Map<number, number>();
  const inTree = new Set<number>();
  const collect = (m: Member) => { inTree.add(m.p.pid); m.children.forEach(collect); };
  collect(parent);
  const walk = (m: Member) => {
    const rt = m.rt!;
    setSessionAndGroup(m, deferred, pids, inTree);
    onSession(m);
    pids.set(m.p.pid, rt.pid);
    if (m.children.length || m.zombies.length) ptrace.setOptions(rt.pid, PTRACE_O.TRACESYSGOOD | PTRACE_O.EXITKILL | PTRACE_O_TRACEFORK | PTRACE_O_TRACECLONE);
    for (const c of m.children) {
      const child = forkChild(rt, newPid ? null : c.p.pid, `clone3(process ${c.p.pid})`, stubAddr, created, c.filesShared ? CLONE_FILES : 0);
      c.rt = new RemoteTask(child.sc, child.mem);
      c.rt.scratch = prt.scratch;
      c.rt.scratchSize = prt.scratchSize;
      walk(c);
    }
    for (const z of m.zombies) {
      // Its pid as made again: pidfds of it are opened on it with the files.
      pids.set(z.pid, makeZombie(rt, z, stubAddr, newPid, created, (pgid) => pids.get(pgid)));
    }
  };
  walk(parent);
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
  return { sc: new RemoteSyscaller(task, mem, stubAddr), mem };
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
function setSessionAndGroup(m: Member, deferred: [Member, number][], existing: Map<number, number>, inTree: Set<number>): void {
  const rt = m.rt!;
  if (m.p.sid === m.p.pid) rt.sc.check('setsid', SYS.setsid);
  else if (m.p.pgid === m.p.pid) rt.sc.check('setpgid(0, 0)', SYS.setpgid, 0, 0);
  if (m.p.pgid !== m.p.pid && inTree.has(m.p.pgid)) {
    const current = Number(rt.sc.check('getpgid', SYS.getpgid, 0));
    const leader = existing.get(m.p.pgid);
    if (leader === undefined) deferred.push([m, m.p.pgid]);
    else if (current !== leader) rt.sc.check(`setpgid(0, ${leader})`, SYS.setpgid, 0, leader);
  }
}

/**
 * MAP_SHARED anonymous memory another process of the tree maps too (same
 * shmem object at dump): the first process in tree order creates it, the
 * others map that same object through /proc/PID/map_files of the first.
 */
function sharedImports(p: ProcessImage, seen: Map<string, { pid: number; v: VmaImage }>, pid: number): Map<number, string> {
  const out = new Map<number, string>();
  for (const v of p.mm.vmas) {
    if (isSpecial(v) || vmaKind(v) !== 'sharedAnon' || !v.file) continue;
    const key = `${v.file.dev}:${v.file.ino}`;
    const first = seen.get(key);
    if (first) out.set(v.start, `/proc/${first.pid}/map_files/${first.v.start.toString(16)}-${first.v.end.toString(16)}`);
    else seen.set(key, { pid, v });
  }
  return out;
}

function openStdio(opts: RestoreOptions): { options: StdioOptions; close: () => void } {
  const fds: number[] = [];
  const pick = (file: string | undefined, flags: string) => {
    if (!file) return 'inherit' as const;
    const fd = openSync(file, flags, 0o600);
    fds.push(fd);
    return fd;
  };
  const options: StdioOptions = [pick(opts.stdin, 'r'), pick(opts.stdout, 'a'), pick(opts.stderr, 'a')];
  return { options, close: () => { for (const fd of fds) closeSync(fd); } };
}

/** Waits for a restored process (tsnap is its parent) without blocking the event loop. */
export function waitForExit(pid: number): Promise<{ code: number | null; signal: number | null }> {
  return new Promise((resolve) => {
    const timer = setInterval(() => {
      let w;
      try {
        w = ptrace.waitpidNoHang(pid);
      } catch {
        clearInterval(timer);
        resolve({ code: null, signal: null });
        return;
      }
      if (!w) return;
      if (WaitStatus.exited(w.status)) { clearInterval(timer); resolve({ code: WaitStatus.exitCode(w.status), signal: null }); }
      else if (WaitStatus.signaled(w.status)) { clearInterval(timer); resolve({ code: null, signal: WaitStatus.termSig(w.status) }); }
    }, 20);
  });
}

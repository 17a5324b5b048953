/**
 * `tsnap restore`: recreate a process from an image and let it run on.
 * All or nothing: until the last step the new process is ours, stopped;
 * any failure kills it, so nothing half-built ever runs.
 */
import { openSync, closeSync, writeFileSync } from 'node:fs';
import type { StdioOptions } from 'node:child_process';
import { join } from 'node:path';
import { ptrace, SYS, EINTR, ERESTART_RESTARTBLOCK, SIGKILL, kill, WaitStatus } from '../sys/index.js';
import { readChain, type Image } from '../image/image-reader.js';
import { readReg, writeReg } from '../freeze/frozen-task.js';
import { createProcess, type NewProcess, type Helper } from './create-process.js';
import { RemoteTask } from '../inject/remote-task.js';
import type { GuardsRead } from '../dump/guards.js';
import { installStub, clearHelperMappings, placeSpecialMappings, mapVmas, finishProtections, lockVmas, installGuards, STUB_SIZE, type Stub } from './address-space.js';
import { fillPages } from './page-filler.js';
import { receivesPages } from './data-ranges.js';
import { checkRestored, isMapDifference } from './self-check.js';
import { fdTableDiff } from '../files/fd-table.js';
import { finishFiles } from './fds.js';
import { resumeConnections, abandonConnections } from '../files/tcp.js';
import { closedTcp } from '../files/socket.js';
import { restoreMm, restoreProcessState, restoreThreadState, queueEarlySignals, requeueSignals, restoreTrapAction, restoreItimers, restorePosixTimers } from '../state/task-state.restore.js';
import { FdRestorer } from './fds.js';
import { SysvSegments } from './sysv-shm.js';
import { withInflight } from '../files/scm-rights.js';
import { restoreAllCreds } from './creds.js';
import { createMemfdObject } from '../files/fifo-memfd.js';
import { PtyRestorer, imagePtys } from '../files/tty.js';
import { mappedGhostOf } from '../files/ghost-map.js';
import { restoreAioRing } from '../files/aio.js';
import { createThreads, type RestoredThread } from './threads.js';
import { isTreeImage, readTreeManifest, checkMember } from '../image/tree-manifest.js';
import { isSpecial, vmaKind } from './layout-plan.js';
import { reapTraced } from '../freeze/frozen-process.js';
import { preflight } from './preflight.js';
import { pausePoint } from '../fault-points.js';
import { checkUnreadChunks } from '../image/unread-chunks.js';
import type { ResolvedTable } from '../image/chain-index.js';
import { TsnapError } from '../errors.js';
import { Steps } from './steps.js';
import { mark } from '../trace.js';
import { createChildren, type PlannedMember } from './tree.js';
import type { ThreadImage, ProcessImage, VmaImage } from '../../formats/schema.js';
import { LazyRestore, isLazyVma, kernelTouched, withLazyBytes, type LazyOptions } from '../lazy/lazy-restore.js';
import { preparePostcopy } from '../lazy/postcopy-prep.js';
import { startHelperEarly, abandonMaking } from './early-start.js';
import { WindowPriority, SPAWN_RAISED } from '../migrate/window-priority.js';

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
  /** restore --lazy: private anonymous memory comes in on demand after the start (src/lazy). */
  lazy?: LazyOptions;
}

export interface RestoreStats {
  restoreUs: number;
  pagesRestored: number;
  bytesRestored: number;
  throughputMiBps: number;
  /** restore --lazy: bytes of memory left to the pager. */
  lazyBytes?: number;
}

export interface RestoreResult {
  pid: number;
  originalPid: number;
  /** Every restored process (a tree restores several), root first. */
  pids: { original: number; pid: number }[];
  stats: RestoreStats;
  warnings: string[];
  /** restore --lazy: the pager, to hand over (--detach) or wait for. */
  lazy?: LazyRestore;
}

/**
 * A process built while its image arrived (migrate/live-build.ts): created
 * under its pid, stopped, its address space laid out and its memory
 * written. restore() does everything else to it, as to one it built itself.
 */
export interface LiveProcess {
  readonly proc: NewProcess;
  /** Its remote task, the stub's scratch area set up. */
  readonly rt: RemoteTask;
  readonly stub: Stub;
  readonly pages: number;
  readonly bytes: number;
  /** The final image, already read and checked (its chain is not needed: the memory is in place). */
  readonly image: Image | null;
  /** Checks the image's layout against the one built; returns the VMAs whose protection is still to be set. */
  addressSpaceDone(p: ProcessImage): VmaImage[];
  /** Its VmFlags read before the downtime, for the self-check (migrate/live-vmflags.ts). */
  readonly earlyVmFlags?: { take(pid: number): { flags: Map<number, string[]> | null; stale: string | null; guards: GuardsRead | null } } | null;
  /** Right before the start, with every task of the process (the receiver gives them back their CPU priority: migrate/window-priority.ts). */
  beforeStart?(tids: readonly number[]): void;
  /**
   * Around the creation of its threads: true before, false after. The
   * receiver lets the threads inherit the window's real-time class
   * (beforeStart gives them their own back with the leader's).
   */
  threadsInherit?(on: boolean): void;
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

/** One process being rebuilt, once it exists. */
interface Member extends Omit<PlannedMember, 'children'> {
  rt: RemoteTask;
  threads: RestoredThread[];
  children: Member[];
  /** restore --lazy: its VMAs left to the pager, and what of them the restore wrote. */
  lazy?: { vmas: VmaImage[]; written: { start: number; end: number }[] };
}

/** The processes of `plan` as created (`rtOf`), in the same order and shape. */
function liveMembers(plan: PlannedMember[], rtOf: Map<PlannedMember, RemoteTask>): Member[] {
  const made = new Map<PlannedMember, Member>();
  for (const m of plan) made.set(m, { chain: m.chain, p: m.p, zombies: m.zombies, filesShared: m.filesShared, rt: rtOf.get(m)!, threads: [], children: [] });
  for (const m of plan) made.get(m)!.children = m.children.map((c) => made.get(c)!);
  return plan.map((m) => made.get(m)!);
}

function loadMembers(dir: string): PlannedMember[] {
  if (!isTreeImage(dir)) {
    const chain = readChain(dir);
    return [{ chain, p: needProcess(chain[0], dir), children: [], zombies: [] }];
  }
  const manifest = readTreeManifest(dir);
  if (manifest.contents !== 'dump') {
    throw new TsnapError('badImage', `${dir} is a tree pre-dump (memory only); restore the final image of its chain (tsnap dump --tree --parent ${dir})`);
  }
  const byPid = new Map<number, PlannedMember>();
  const live = manifest.processes.filter((m) => !m.zombie);
  const members = live.map((m) => {
    const sub = join(dir, m.dir);
    const chain = readChain(sub);
    const member: PlannedMember = { chain, p: needProcess(chain[0], sub), children: [], zombies: [], filesShared: !!m.filesShared };
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

/** `live`: the process already exists with its memory (a streamed migration); one process only. */
export async function restore(opts: RestoreOptions, live?: LiveProcess): Promise<RestoreResult> {
  const t0 = process.hrtime.bigint();
  mark('restore: begin');
  const warnings: string[] = [];
  // Told once the restore succeeded: a refused or failed one reports its error alone.
  const warn = (m: string) => { warnings.push(m); };
  const newPid = !!opts.newPid;
  const stdio = openStdio(opts);
  // restore --lazy: tsnap's thread and the new task in the real-time class
  // until the start (migrate/window-priority.ts: on a busy host each of the
  // restore's ~30 stops waited for a CPU). TSNAP_LAZY_RT=0: as before (bench A/B).
  const prio = opts.lazy && !opts.lazy.remote && !live && process.env.TSNAP_LAZY_RT !== '0' ? new WindowPriority().raise([process.pid]) : null;
  /** Set at the start: a guard whose spawn returns later is not raised. */
  let windowOver = false;
  // Its start overlaps the image's read (early-start.ts).
  // The helper in the same class from its first instruction (a spawn attribute): its exec, its
  // pause() and the clone are wake-ups too. It dies before the start; its clone, the new
  // process, inherits the class and is adopted below (put back to tsnap's own before it starts).
  const sched = prio?.has(process.pid) ? SPAWN_RAISED : undefined;
  const early = live ? null : startHelperEarly(opts.dir, newPid, stdio.options, sched);
  let plan: PlannedMember[];
  let tree: boolean;
  let root: PlannedMember;
  /** Each process's chain resolved over its dumped memory, for the page writer. */
  const resolvedOf = new Map<ProcessImage, ResolvedTable>();
  try {
    mark('restore: read the image');
    plan = live?.image ? [{ chain: [live.image], p: needProcess(live.image, opts.dir), children: [], zombies: [] }] : loadMembers(opts.dir);
    tree = isTreeImage(opts.dir);
    root = plan[0];
    mark('restore: image read');
    if (live && tree) throw new TsnapError('internal', 'a process built while it arrived is one process, not a tree');
    if (live && opts.lazy && !opts.lazy.remote) throw new TsnapError('internal', 'a process built while it arrived has its memory already: it cannot be restored lazily');
    mark('restore: preflight');
    // A live process holds its own pid already.
    for (const m of plan) preflight(m.chain[0], m.p, newPid || !!live);
    // The same memory plan as below (shared memory is filled once, by its first process).
    const planned = new Map<string, { pid: number; v: VmaImage }>();
    mark('restore: check the chunks not read');
    // A live process's pages were checked as they arrived.
    for (const m of live ? [] : plan) {
      const imports = sharedImports(m.p, planned, 0);
      // The VMAs themselves as the ranges (resolveChain copies what it keeps).
      resolvedOf.set(m.p, checkUnreadChunks(m.chain, m.p.mm.vmas.filter((v) => v.dumped && !imports.has(v.start))));
    }
  } catch (err) {
    prio?.restore();
    await early?.abandon();
    stdio.close();
    throw err;
  }

  mark('restore: image checked');
  mark('restore: start the helper');
  let helper: Helper | null = null;
  /** Every task created, for the cleanup of a failed restore. */
  const created: { pid: number; leader: boolean }[] = [];
  const steps = new Steps('create the process');
  /** The remote task of every process created. */
  const rtOf = new Map<PlannedMember, RemoteTask>();
  let fdr: FdRestorer | null = null;
  let ptys: PtyRestorer | null = null;
  let sysv: SysvSegments | null = null;
  let pages = 0;
  let bytes = 0;
  let lazy: LazyRestore | null = null;
  let earlyVmFlags: Map<number, string[]> | null = null;
  let earlyGuards: GuardsRead | null = null;
  /** An early helper made for another pid, being killed: awaited before a failure is reported. */
  let strayHelper: Promise<void> | null = null;
  try {
    const wantPid = newPid ? null : root.p.pid;
    if (early && early.pid !== wantPid) strayHelper = early.abandon();
    const making = live ? null : early && early.pid === wantPid ? early.making : createProcess(wantPid, stdio.options, undefined, sched);
    // The lazy restore's guard starts while the helper does.
    try {
      lazy = opts.lazy ? new LazyRestore(opts.lazy) : null;
    } catch (err) {
      if (making) await abandonMaking(making);
      throw err;
    }
    // The guard answers "armed" before the start: in the raised class until then, never after.
    if (prio && lazy) lazy.guardProcess.then((pid) => { if (!windowOver) prio.raise([pid]); }, () => { /* arm() says so */ });
    mark('restore: wait for the helper');
    const made = making ? await making : null;
    helper = made?.helper ?? null;
    const proc: NewProcess = made ? made.proc : live!.proc;
    created.push({ pid: proc.pid, leader: true });
    prio?.adopt(proc.pid, process.pid);
    helper?.kill('SIGKILL');
    const rootRt = live ? live.rt : new RemoteTask(proc.sc, proc.mem);
    rtOf.set(root, rootRt);
    steps.at('check the CPU state layout');
    const here = ptrace.getXstate(proc.pid);
    const xlen = here.length;
    for (const m of plan) {
      for (const t of m.p.threads) {
        if (xlen !== t.xstate.length) {
          // The same features (XCR0, in the area's software-reserved bytes) take the same length on one CPU: a length that differs for them is damage, not another CPU.
          const xcr0 = (b: Uint8Array) => (b.length >= 472 ? Buffer.from(b.buffer, b.byteOffset, b.length).readBigUInt64LE(464) : null);
          const mine = xcr0(here);
          if (mine !== null && mine === xcr0(t.xstate)) {
            throw new TsnapError('badImage', `thread ${t.tid}'s XSAVE area is ${t.xstate.length} bytes, where this CPU's for the same features (XCR0 0x${mine.toString(16)}) is ${xlen}: the image is damaged; dump the process again`);
          }
          throw new TsnapError('kernel', `this CPU's XSAVE area is ${xlen} bytes, the image's ${t.xstate.length}; restore on the same kind of CPU`);
        }
      }
    }
    /** Where each memfd of the tree was recreated: process and fd. */
    const memfdAt = new Map<string, { pid: number; fd: number }>();
    steps.at('prepare the address space');
    const stub = live ? live.stub : installStub(rootRt, plan.map((m) => m.p));
    if (!live) clearHelperMappings(rootRt, stub);
    // Above every fd number of the tree: a pty made before the fds waits there.
    ptys = new PtyRestorer(plan.map((m) => m.p.fds), Math.max(2, ...plan.flatMap((m) => withInflight(m.p.fds).map((f) => f.fd))) + 1);
    // A session leader takes its controlling terminal before it forks: members inherit it.
    const onSession = (m: PlannedMember, rt: RemoteTask) => { steps.at(`restore the controlling terminal of ${m.p.pid}`); ptys!.takeCtty(rt, m.p, warn); };
    /** Original pid -> restored pid of every process of the tree, zombies included. */
    let treePids = new Map<number, number>();
    if (!tree) {
      if (root.p.sid === root.p.pid) rootRt.sc.check('setsid', SYS.setsid);
      onSession(root, rootRt);
    } else {
      steps.at('create the process tree');
      const { deferred, pidOf } = createChildren(root, rtOf, stub.addr, newPid, created, onSession);
      treePids = pidOf;
      for (const [rt, pgid] of deferred) rt.sc.check(`setpgid(0, ${pidOf.get(pgid)})`, SYS.setpgid, 0, pidOf.get(pgid)!);
      if (newPid) warn('processes got new pids: what they recorded of each other\'s pids is stale');
      pausePoint('restore-tree-created');
    }
    const members = liveMembers(plan, rtOf);
    // Before anything else can be sent to the new pids is done with: the image's signals were sent first.
    steps.at('queue the signals pending at the dump');
    for (const m of members) queueEarlySignals(m.rt, m.p);
    pausePoint('restore-pending-queued');
    steps.at('take or make the SysV shm segments');
    sysv = new SysvSegments(members.flatMap((m) => m.p.sysvShm ?? []));
    sysv.prepare();
    // Made before the memory: a deleted file mapped and open as an fd is one file (ghost-map.ts).
    fdr = new FdRestorer(members.map((m) => m.p.fds), memfdAt, warn, { tcpClose: opts.tcpClose, ptys: ptys! });
    for (const m of members) fdr.ghosts.addMapped(m.p.mappedGhosts ?? []);
    const sharedFrom = new Map<string, { pid: number; v: VmaImage }>();
    for (const m of members) {
      const rt = m.rt;
      steps.at(`rebuild the address space of ${m.p.pid}`);
      if (!live) placeSpecialMappings(rt, m.p, stub);
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
      const fixProt = live ? live.addressSpaceDone(m.p) : mapVmas(rt, m.p, imports, fileAt, sysv, lazy ? undefined : receivesPages(resolvedOf.get(m.p)!));
      steps.at(`write the memory of ${m.p.pid}`);
      const dumped = m.p.mm.vmas.filter((v) => v.dumped && !imports.has(v.start));
      const remote = opts.lazy?.remote;
      const lazyVmas = lazy && !remote ? dumped.filter(isLazyVma) : [];
      /** Task fds to close in the mm step's list (the uffd's copy in the task). */
      const closeLater: number[] = [];
      if (lazy) {
        const lz = lazy;
        // The uffd is made here, while remote syscalls stop once (lazy-restore.ts).
        if (remote) m.lazy = await preparePostcopy(rt, dumped, m.p.threads, remote.set, remote.source, (vmas, batch) => lz.open(rt, vmas, batch));
        else lazy.open(rt, lazyVmas, undefined, (fd) => closeLater.push(fd));
        m.lazy ??= { vmas: lazyVmas, written: kernelTouched(m.p.threads, lazyVmas) };
      }
      // Without --lazy the chain was resolved over the dumped VMAs already (resolvedOf), which fillPages
      // takes as it is: the ranges are made only when it resolves them itself (10 000 objects).
      const resolved = lazy ? undefined : resolvedOf.get(m.p);
      const within = resolved ? [] : [...dumped.filter((v) => !lazyVmas.includes(v)).map((v) => ({ start: v.start, end: v.end })), ...m.lazy?.written ?? []];
      const filled = live ? { pages: live.pages, bytes: live.bytes } : await fillPages(rt.pid, m.chain, within, rt.sc,
        opts.onProgress ? (bytes, total) => opts.onProgress!({ bytes, total, pid: m.p.pid }) : undefined, resolved);
      pages += filled.pages;
      bytes += filled.bytes;
      for (const r of m.p.aioRings ?? []) restoreAioRing(rt, r);
      installGuards(rt, m.p.mm.vmas);
      finishProtections(rt, fixProt);
      lockVmas(rt, m.p.mm.vmas);
      steps.at(`restore the mm fields of ${m.p.pid} (PR_SET_MM_MAP)`);
      restoreMm(rt, m.p, closeLater);
    }
    // Every uffd exists: the guard takes its copies while the restore goes on.
    lazy?.sendArm();
    const pidNow = new Map([...treePids, ...members.map((m): [number, number] => [m.p.pid, m.rt.pid])]);
    fdr.pidNow = (pid) => {
      const now = pidNow.get(pid);
      // The dump refuses pidfds of processes it does not hold: never open one on a stranger.
      if (now === undefined) throw new TsnapError('badImage', `${opts.dir}: a pidfd names process ${pid}, which is not in the image`);
      return now;
    };
    await fdr.prepare();
    for (const m of members) {
      steps.at(`restore the files of ${m.p.pid}`);
      fdr.createFiles(m.rt, m.p.fds);
    }
    for (const m of members) fdr.connectUnix(m.rt, m.p.fds);
    for (const m of members) fdr.registerEpolls(m.rt, m.p.fds);
    for (const m of members) {
      steps.at(`queue the files in flight of ${m.p.pid} again`);
      fdr.requeueInflight(m.rt, m.p.fds, (pid) => pidNow.get(pid) ?? pid);
    }
    for (const m of members) fdr.closeOthers(m.rt, m.p.fds);
    steps.at('finish the terminals');
    ptys.finish(members.map((m) => ({ rt: m.rt, p: m.p })), (id) => members.find((x) => x.p.pid === id)?.rt.pid ?? id, warn);
    // Every fd is open: the deleted files made again are deleted again.
    fdr.ghosts.removeAll();
    sysv.finish();
    fdr.releaseLocal();
    for (const m of members) {
      const rt = m.rt;
      steps.at(`restore the state of ${m.p.pid}`);
      restoreProcessState(rt, m.p, warn);
      // Before any thread is created (the early read's watch counts this one's syscalls only).
      // A local lazy restore has no early read. Post-copy's registration comes later and
      // leaves the compared flags alone; a VMA it splits starts where the early read has
      // no area, and the check then reads smaps itself (self-check.ts).
      if (live?.earlyVmFlags && (!lazy || opts.lazy?.remote) && (opts.check ?? 'warn') !== 'off') {
        const early = live.earlyVmFlags.take(rt.pid);
        earlyVmFlags = early.flags;
        earlyGuards = early.guards;
        mark(`restore: VmFlags read before the freeze ${early.stale ? `stale (${early.stale})` : 'hold'}${early.guards ? ', guards too' : ''}`);
      }
      steps.at(`create the threads of ${m.p.pid}`);
      const tids: number[] = [];
      // A thread made by a task of the window's class started in the normal
      // class (SCHED_RESET_ON_FORK), and its clone waited until it was
      // scheduled to stop: 50-90 ms at load 8 for one thread.
      live?.threadsInherit?.(true);
      let others: ReturnType<typeof createThreads>;
      try {
        others = createThreads(rt, m.p.threads.slice(1), newPid, tids);
      } finally {
        live?.threadsInherit?.(false);
      }
      for (const tid of tids) created.push({ pid: tid, leader: false });
      m.threads = [{ image: m.p.threads[0], rt }, ...others];
      if (newPid && m.threads.length > 1) warn(`threads of ${m.p.pid} got new tids: the program's own record of them (pthread tid caches) still holds the old ones`);
      steps.at(`restore the thread state of ${m.p.pid}`);
      for (const th of m.threads) restoreThreadState(th.rt, th.image);
      steps.at(`queue the pending signals of ${m.p.pid}`);
      requeueSignals(rt, rt.pid, m.threads, m.p);
      restoreItimers(rt, m.p);
      const tidOf = new Map(m.threads.map((th) => [th.image.tid, th.rt.pid]));
      restorePosixTimers(rt, m.p, (tid) => tidOf.get(tid) ?? rt.pid);
    }
    // Owners name processes and threads of the whole tree: once they all exist.
    const idNow = new Map<number, number>();
    for (const [original, now] of treePids) idNow.set(original, now);
    for (const m of members) {
      idNow.set(m.p.pid, m.rt.pid);
      for (const th of m.threads) idNow.set(th.image.tid, th.rt.pid);
    }
    for (const m of members) {
      steps.at(`finish the files of ${m.p.pid}`);
      fdr.createLate(m.rt, m.p.fds, (id) => idNow.get(id));
      finishFiles(m.rt, m.p.fds, (id) => idNow.get(id) ?? id);
    }
    // Last of all that needs privilege: afterwards a process may be an ordinary user's.
    for (const m of members) {
      steps.at(`restore the credentials of ${m.p.pid}`);
      restoreAllCreds(m.rt, m.p, m.threads, warn);
    }
    if (lazy) {
      // The last remote syscalls but the stub's munmap: nothing tsnap does touches these ranges any more.
      for (const m of members) {
        steps.at(`make the memory of ${m.p.pid} lazy`);
        await lazy.attach(m.rt, m.chain, m.lazy!.vmas, m.lazy!.written);
      }
    }
    for (const m of members) {
      steps.at(`remove the restore stub from ${m.p.pid}`);
      restoreTrapAction(m.rt, m.p);
      m.rt.sc.check('munmap(stub)', SYS.munmap, stub.addr, STUB_SIZE);
      steps.at(`set the registers of ${m.p.pid}`);
      for (const th of m.threads) {
        const tid = th.rt.pid;
        ptrace.setRegs(tid, resumeRegisters(th.image));
        ptrace.setXstate(tid, th.image.xstate);
        ptrace.setSigmask(tid, th.image.sigmask);
      }
    }
    if ((opts.check ?? 'warn') !== 'off') {
      steps.at('check the restored processes against their images');
      const diffs = members.flatMap((m) => [...checkRestored(opts.tcpClose ? withoutTcp(m.p) : m.p, m.rt.pid, {
        newPid, threads: m.threads.map((th) => ({ tid: th.rt.pid, sigmask: th.image.sigmask })), idNow: (id) => idNow.get(id) ?? id, ptys: imagePtys(members.map((x) => x.p)), vmFlags: earlyVmFlags, guards: earlyGuards,
      }), ...fdTableDiff(m.rt.pid, m.children.map((c) => ({ pid: c.rt.pid, shared: !!c.filesShared })))].map((d) => `restore check of ${m.p.pid}: ${d}`));
      // A live build's map came from the sender's LAYOUT frames: one that is not the image's fails the
      // live restore, and the receiver restores from the image chain instead (a hostile or broken sender
      // made a heap read-only this way, and the process crashed once resumed).
      const mapDiff = live ? diffs.find(isMapDifference) : undefined;
      if (mapDiff !== undefined) throw new TsnapError('restoreFailed', `the process built while it arrived has another memory map than its image (${mapDiff}); nothing was started`);
      if (diffs.length && opts.check === 'strict') {
        throw new TsnapError('restoreFailed', `the restored process differs from its image (${diffs.length} differences; first: ${diffs[0]}); nothing was started`);
      }
      for (const d of diffs) warn(d);
    }
    if (lazy) {
      // Last before the start, not right after the registration: the guard
      // took its copies of the uffds while the stub went and the check ran
      // (sendArm() above), and its answer is mostly there by now (waiting for
      // it at once was 0.5-1.3 ms of the time to running).
      steps.at('wait for the lazy restore guard');
      await lazy.arm();
    }
    for (const m of members) m.rt.mem.close();
    if (opts.pidfile) writeFileSync(opts.pidfile, `${proc.pid}\n`, { mode: 0o644 });
    // Only now may the connections speak: nothing after this can fail.
    steps.at('resume the TCP connections');
    resumeConnections();
    steps.at('start the processes');
    live?.beforeStart?.(members.flatMap((m) => m.threads.map((th) => th.rt.pid)));
    pausePoint('restore-before-start');
    // The processes (and the guard) start in the class they were made in;
    // tsnap's thread gets its own back as restore() returns (finally below).
    windowOver = true;
    prio?.restoreAllBut(process.pid);
    // Children before parents, other threads before their leader: the one a
    // parent waits for goes last.
    for (const m of [...members].reverse()) {
      // Queued while still traced: it takes effect before the first instruction.
      if (m.p.stopSignal) kill(m.rt.pid, m.p.stopSignal);
      for (const th of m.threads.slice(1)) ptrace.detach(th.rt.pid);
      ptrace.detach(m.rt.pid);
      // What could not wait in the queue (a SIGSTOP sent meanwhile) stopped the tracee and was held: sent now.
      for (const th of m.threads) for (const sig of th.rt.sc.task.deferredSignals) { try { kill(th.rt.pid, sig); } catch { /* gone */ } }
    }
    (lazy as LazyRestore | null)?.start();
    const restoreUs = Number(process.hrtime.bigint() - t0) / 1000;
    mark('restore: done');
    for (const w of warnings) opts.warn?.(w);
    return {
      pid: proc.pid,
      originalPid: root.p.pid,
      pids: members.map((m) => ({ original: m.p.pid, pid: m.rt.pid })),
      warnings,
      stats: withLazyBytes({
        restoreUs,
        pagesRestored: pages,
        bytesRestored: bytes,
        throughputMiBps: bytes / (1 << 20) / (restoreUs / 1e6),
      }, lazy),
      ...(lazy ? { lazy: lazy as LazyRestore } : {}),
    };
  } catch (err) {
    // While every task is still there (killed and reaped below, a pid could be another's by the finally).
    windowOver = true;
    prio?.restoreAllBut(process.pid);
    (fdr as FdRestorer | null)?.ghosts.removeAll();
    (sysv as SysvSegments | null)?.abort();
    (fdr as FdRestorer | null)?.releaseLocal();
    abandonConnections(plan.flatMap((m) => m.p.fds));
    for (const c of created) if (c.leader) { try { kill(c.pid, SIGKILL); } catch { /* gone */ } }
    // Traced threads stay zombies until reaped, and hold back their leader's report.
    for (const c of created) if (!c.leader) reapTraced(c.pid);
    for (const c of [...created].reverse()) if (c.leader) reapTraced(c.pid);
    for (const rt of rtOf.values()) { try { rt.mem.close(); } catch { /* closed */ } }
    helper?.kill('SIGKILL');
    await strayHelper;
    (lazy as LazyRestore | null)?.abort();
    throw steps.failure(err, `restore from ${opts.dir}`);
  } finally {
    windowOver = true;
    prio?.restore();
    stdio.close();
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

export function openStdio(opts: Pick<RestoreOptions, 'stdin' | 'stdout' | 'stderr'>): { options: StdioOptions; close: () => void } {
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

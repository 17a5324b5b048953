/**
 * `tsnap restore`: recreate a process from an image and let it run on.
 * All or nothing: until the last step the new process is ours, stopped;
 * any failure kills it, so nothing half-built ever runs.
 */
import { openSync, closeSync, writeFileSync } from 'node:fs';
import type { ChildProcess, StdioOptions } from 'node:child_process';
import { ptrace, SYS, EINTR, ERESTART_RESTARTBLOCK, SIGKILL, kill, WaitStatus } from '../sys/index.js';
import { readChain, type Image } from '../image/image-reader.js';
import { readReg, writeReg } from '../freeze/frozen-task.js';
import { createProcess, type NewProcess } from './create-process.js';
import { RemoteTask } from './remote-task.js';
import { installStub, clearHelperMappings, placeSpecialMappings, mapVmas, finishProtections, STUB_SIZE } from './address-space.js';
import { fillPages } from './page-filler.js';
import { restoreMm, restoreProcessState, restoreThreadState } from './task-state.js';
import { restoreFds } from './fds.js';
import { createThreads } from './threads.js';
import { reapTraced } from '../freeze/frozen-process.js';
import { preflight } from './preflight.js';
import { TsnapError, asTsnapError } from '../errors.js';
import type { ThreadImage } from '../../formats/schema.js';

export interface RestoreOptions {
  dir: string;
  /** Restore under a fresh pid when the original one is taken (or always). */
  newPid?: boolean;
  /** Files for the restored process's stdin/stdout/stderr instead of tsnap's own. */
  stdin?: string;
  stdout?: string;
  stderr?: string;
  pidfile?: string;
  warn?: (msg: string) => void;
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

export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  const t0 = process.hrtime.bigint();
  const warnings: string[] = [];
  const warn = (m: string) => { warnings.push(m); opts.warn?.(m); };
  const chain = readChain(opts.dir);
  const img: Image = chain[0];
  const p = img.process;
  if (!p) {
    throw new TsnapError('badImage', `${opts.dir} is a pre-dump (memory only, taken while the process ran); restore the final image of its chain (tsnap dump --parent ${opts.dir})`);
  }
  const newPid = !!opts.newPid;
  preflight(img, p, newPid);

  const stdio = openStdio(opts);
  let proc: NewProcess | null = null;
  let helper: ChildProcess | null = null;
  let step = 'create the process';
  const threadTids: number[] = [];
  try {
    ({ proc, helper } = await createProcess(newPid ? null : p.pid, stdio.options));
    helper.kill('SIGKILL');
    const rt = new RemoteTask(proc.sc, proc.mem);
    const t = p.threads[0];
    step = 'check the CPU state layout';
    const xlen = ptrace.getXstate(proc.pid).length;
    if (xlen !== t.xstate.length) {
      throw new TsnapError('kernel', `this CPU's XSAVE area is ${xlen} bytes, the image's ${t.xstate.length}; restore on the same kind of CPU`);
    }
    step = 'rebuild the address space';
    const stub = installStub(rt, p);
    clearHelperMappings(rt, stub);
    placeSpecialMappings(rt, p, stub);
    const fixProt = mapVmas(rt, p);
    step = 'write memory';
    const filled = await fillPages(proc.pid, chain, p.mm.vmas.filter((v) => v.dumped).map((v) => ({ start: v.start, end: v.end })), proc.sc);
    finishProtections(rt, fixProt);
    step = 'restore mm fields (PR_SET_MM_MAP)';
    restoreMm(rt, p);
    step = 'restore files';
    restoreFds(rt, p.fds);
    step = 'restore process state';
    restoreProcessState(rt, p, warn);
    step = 'create the threads';
    const threads = [{ image: t, rt }, ...createThreads(rt, p.threads.slice(1), newPid, threadTids)];
    if (newPid && threads.length > 1) warn('threads got new tids: the program\'s own record of them (pthread tid caches) still holds the old ones');
    step = 'restore thread state';
    for (const th of threads) restoreThreadState(th.rt, th.image);
    step = 'remove the restore stub';
    rt.sc.check('munmap(stub)', SYS.munmap, stub.addr, STUB_SIZE);
    step = 'set registers';
    for (const th of threads) {
      const tid = th.rt.pid;
      ptrace.setRegs(tid, resumeRegisters(th.image));
      ptrace.setXstate(tid, th.image.xstate);
      ptrace.setSigmask(tid, th.image.sigmask);
    }
    proc.mem.close();
    if (opts.pidfile) writeFileSync(opts.pidfile, `${proc.pid}\n`, { mode: 0o644 });
    step = 'start the process';
    // The other threads first: the leader is the one a parent waits for.
    for (const th of threads.slice(1)) ptrace.detach(th.rt.pid);
    ptrace.detach(proc.pid);
    const restoreUs = Number(process.hrtime.bigint() - t0) / 1000;
    return {
      pid: proc.pid,
      originalPid: p.pid,
      warnings,
      stats: {
        restoreUs,
        pagesRestored: filled.pages,
        bytesRestored: filled.bytes,
        throughputMiBps: filled.bytes / (1 << 20) / (restoreUs / 1e6),
      },
    };
  } catch (err) {
    if (proc) {
      try { kill(proc.pid, SIGKILL); } catch { /* gone */ }
      // Traced threads stay zombies until reaped, and hold back the leader's report.
      for (const tid of threadTids) reapTraced(tid);
      reapTraced(proc.pid);
      try { proc.mem.close(); } catch { /* closed */ }
    }
    helper?.kill('SIGKILL');
    const e = asTsnapError(err, `restore from ${opts.dir}`);
    if (e.kind === 'internal') throw new TsnapError('restoreFailed', `restore failed while trying to ${step}: ${e.message}`, err);
    throw e;
  } finally {
    stdio.close();
  }
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

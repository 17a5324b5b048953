/**
 * CRIU beside tsnap in one run (issue 14: every figure as a ratio to it).
 * Its restore detaches (-d) and gives the process back under its old pid,
 * so before the next restore that pid must be free again. Two things kept
 * it taken here: PID 1 reaps an orphan late (1.3-2 s), and pid_max is
 * 32768, so over a bench of minutes on a shared machine the pid counter
 * wraps and the dumped pid can be handed to anything, a thread included
 * (another rep's `tsnap restore` or its task among them). A bench that
 * calls adoptRestorees() reaps its orphans itself, at once, and
 * criuRestore() waits for the pid to be free, naming who holds it if it
 * stays taken.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { kill, ptrace, setChildSubreaper, SysError } from '../src/sys/index.js';

/** The criu to compare with ($TSNAP_CRIU or criu on PATH), or null when none works here. */
export function findCriu(): string | null {
  for (const c of [process.env.TSNAP_CRIU, 'criu'].filter((x): x is string => !!x)) {
    if (spawnSync(c, ['--version'], { stdio: 'ignore' }).status === 0) return c;
  }
  return null;
}

function run(criu: string, args: string[]): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(criu, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${criu} ${args.join(' ')}: exit ${r.status}: ${String(r.stderr).trim().split('\n').slice(-2).join(' | ')}`);
  return ms;
}

/** criu dump of `pid` into `dir` (made fresh); the process is killed unless `leaveRunning`. Wall ms. */
export function criuDump(criu: string, pid: number, dir: string, leaveRunning = false): number {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const ms = run(criu, ['dump', '-t', String(pid), '-D', dir, '--shell-job', ...(leaveRunning ? ['--leave-running'] : [])]);
  // The pid criuRestore() needs free; reading it back from pstree.img would take a protobuf decoder.
  writeFileSync(join(dir, 'bench-dumped.pid'), `${pid}\n`);
  return ms;
}

/**
 * A fresh fixture from `start` (kept in `keep`, for the bench to kill)
 * dumped by criu into `dir`, and reaped: criu's dump kills it, and until
 * Node reaps it its pid, the one CRIU restores, is taken. Also criuRestore()'s
 * `redump` when that pid stays someone else's.
 */
export async function criuDumpFixture(criu: string, start: () => Promise<ChildProcess>, dir: string, keep: ChildProcess[]): Promise<void> {
  const c = await start();
  keep.push(c);
  const gone = new Promise((r) => c.once('exit', r));
  criuDump(criu, c.pid!, dir);
  await gone;
}

/**
 * Makes this process the reaper of what its children leave running when
 * they exit (`criu restore -d`'s task, `tsnap restore --detach`'s), so that
 * killAndWaitGone() frees the pid at once instead of when PID 1 gets to it.
 * The guardian a dump() in the bench daemonises comes too: once it exits it
 * stays a zombie of the bench's until the bench exits (one pid, not reused).
 */
export function adoptRestorees(): void {
  setChildSubreaper();
}

/** Who holds `pid` (a process or a thread), or null when it is free. */
export function pidHolder(pid: number): string | null {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const field = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(status)?.[1] ?? '?';
  const tgid = field('Tgid');
  return `${field('Name')} (${tgid === String(pid) ? 'process' : `thread of ${tgid}`}, ppid ${field('PPid')}, ${field('State')})`;
}

/** The dumped pid stayed taken (by whom: the message). */
export class PidTaken extends Error {}

/** Waits until `pid` is free; the event loop runs meanwhile, so a child of this process's can be reaped by Node. */
async function waitPidFree(pid: number, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (let holder = pidHolder(pid); holder !== null; holder = pidHolder(pid)) {
    if (Date.now() > end) throw new PidTaken(`pid ${pid}, which criu restore must reuse, is held by ${holder} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** CPU ms of this process's reaped children (criu itself: the task it restores is not its to reap). */
function childrenCpuMs(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  return (Number(stat[13]) + Number(stat[14])) * 10; // cutime, cstime; USER_HZ = 100
}

export interface CriuRestoreOptions {
  /** How long the dumped pid may stay taken before it is given up (10 s). */
  pidFreeTimeoutMs?: number;
  /**
   * Makes a fresh image in `dir` with criuDump() of a new process (so under
   * a pid the counter has just passed), for when the dumped pid stays taken
   * by a process that is not the bench's: PID 1 here left such a zombie
   * for over 10 s once. Without it, that is an error naming the holder.
   */
  redump?: () => Promise<void>;
}

/** criu restore -d from `dir`: wall ms until criu exits (the process runs), criu's own CPU ms, and the pid. */
export async function criuRestore(criu: string, dir: string, opts: CriuRestoreOptions = {}): Promise<{ ms: number; criuCpuMs: number; pid: number }> {
  const pidfile = join(dir, 'bench-restored.pid');
  const dumped = join(dir, 'bench-dumped.pid');
  for (let attempt = 1, redumps = 0; ; attempt++) {
    rmSync(pidfile, { force: true });
    const want = existsSync(dumped) ? Number(readFileSync(dumped, 'utf8').trim()) : null;
    try {
      if (want !== null) await waitPidFree(want, opts.pidFreeTimeoutMs ?? 10_000);
      const c0 = childrenCpuMs();
      const ms = run(criu, ['restore', '-D', dir, '--shell-job', '-d', '--pidfile', pidfile]);
      return { ms, criuCpuMs: childrenCpuMs() - c0, pid: Number(readFileSync(pidfile, 'utf8').trim()) };
    } catch (e) {
      if (want === null || !(e instanceof PidTaken || /File exists/.test(String(e)))) throw e;
      // Taken between the check and criu's clone3 (a short-lived process or
      // thread of anyone's, criu's own helpers among them, the counter
      // passing by): a failed attempt is not a figure, so once more. criu
      // has undone its own work by its exit.
      if (!(e instanceof PidTaken) && attempt < 3) {
        console.error(`criu restore: pid ${want} taken at clone (attempt ${attempt}; now ${pidHolder(want) ?? 'free'}): again`);
        continue;
      }
      if (!opts.redump || redumps >= 2) throw e;
      redumps++;
      attempt = 0;
      console.error(`criu restore: pid ${want} stays taken (${pidHolder(want) ?? 'free again'}): a fresh CRIU image, under a new pid`);
      await opts.redump();
    }
  }
}

/**
 * Kills a process criu (or `tsnap restore --detach`) restored and waits
 * until its pid is free: reaped here when adoptRestorees() made it this
 * process's child, else by PID 1, late.
 */
export async function killAndWaitGone(pid: number, timeoutMs = 10_000): Promise<void> {
  try { kill(pid, 9); } catch { /* gone */ }
  try {
    ptrace.waitpidBlocking(pid);
    return;
  } catch (e) {
    if (!(e instanceof SysError) || e.errno !== 10) throw e; // ECHILD: not ours to reap
  }
  const end = Date.now() + timeoutMs;
  while (existsSync(`/proc/${pid}`)) {
    if (Date.now() > end) throw new Error(`process ${pid} was not reaped within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** CPU ms the process has used (user + system), from /proc; null once it is gone. */
export function taskCpuMs(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(stat[11]) + Number(stat[12])) * 10; // USER_HZ = 100
  } catch {
    return null;
  }
}

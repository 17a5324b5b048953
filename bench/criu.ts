/**
 * CRIU beside tsnap in one run (issue 14: every figure as a ratio to it).
 * Its restore detaches (-d) and gives the process back under its old pid,
 * so before the next restore that pid must be free again: PID 1 reaps the
 * orphan late here (1.3-2 s).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { kill } from '../src/sys/index.js';

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
  return run(criu, ['dump', '-t', String(pid), '-D', dir, '--shell-job', ...(leaveRunning ? ['--leave-running'] : [])]);
}

/** CPU ms of this process's reaped children (criu itself: the task it restores is not its to reap). */
function childrenCpuMs(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  return (Number(stat[13]) + Number(stat[14])) * 10; // cutime, cstime; USER_HZ = 100
}

/** criu restore -d from `dir`: wall ms until criu exits (the process runs), criu's own CPU ms, and the pid. */
export function criuRestore(criu: string, dir: string): { ms: number; criuCpuMs: number; pid: number } {
  const pidfile = join(dir, 'bench-restored.pid');
  rmSync(pidfile, { force: true });
  const c0 = childrenCpuMs();
  const ms = run(criu, ['restore', '-D', dir, '--shell-job', '-d', '--pidfile', pidfile]);
  return { ms, criuCpuMs: childrenCpuMs() - c0, pid: Number(readFileSync(pidfile, 'utf8').trim()) };
}

/** Kills a process criu restored and waits until its pid is free (reaped by PID 1). */
export async function killAndWaitGone(pid: number, timeoutMs = 10_000): Promise<void> {
  try { kill(pid, 9); } catch { /* gone */ }
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

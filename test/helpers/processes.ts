/**
 * The one registry of processes the tests start. Every process a test
 * worker starts carries TSNAP_TEST_OWNER=<run>.<worker pid> in its
 * environment: inherited by whatever it forks, and kept by a restore
 * (/proc/PID/environ reads the restored process's own env block). So the
 * processes a test left behind — restored children, forks of fixtures,
 * tsnap servers, holders — are found by that marker alone, and never
 * another worker's or another run's (other suites run on this machine at
 * the same time).
 *
 * After each test every process of this worker is killed by pid; the global
 * teardown (test/global-setup.ts) fails the run if any process of the run
 * is still alive at its end.
 *
 * It is also the one harness that ends what a test started (fixtures.ts
 * startProcess, tsnap.ts restoreDetached and its feeders, serve.ts
 * startServe, scenarios.ts restores): each registers with track() or
 * trackChild(), and useProcessCleanup() ends them all after each test,
 * quietly, before the marker sweep above would name them as left behind.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { afterEach } from 'vitest';

/** The run: set by the global setup, so that every worker shares it. */
export function runId(): string {
  return (process.env.TSNAP_TEST_RUN ??= `r${randomBytes(6).toString('hex')}`);
}

/** This worker's marker. */
export const OWNER = `${runId()}.${process.pid}`;

/**
 * Called before each test file of the worker (test/helpers/setup-file.ts),
 * before any test starts a process; the hook belongs to that file. Set in
 * our env after our own start, the marker is not in /proc/self/environ:
 * this worker itself never matches; every child inherits it.
 *
 * The hook runs after the test file's own cleanup hooks (hooks unwind as a
 * stack): what is left then, the test left behind; it is named, then
 * killed. (No last-resort kill when the worker exits: what a file leaves
 * after its last test must fail the run; the global teardown kills it.)
 */
export function claimWorker(): void {
  process.env.TSNAP_TEST_OWNER = OWNER;
  afterEach(async (ctx) => {
    const left = await killOwnProcesses();
    if (left.length) console.warn(`test "${ctx.task.name}" left ${left.length} process(es) running; killed: ${left.map(describeProcess).join(', ')}`);
  });
}

const registered = new Map<number, number>(); // pid -> start time

function startTime(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
  } catch {
    return null;
  }
}

/** The TSNAP_TEST_OWNER of a process, or null (none, gone, or a zombie). */
export function ownerOf(pid: number): string | null {
  let env: string;
  try { env = readFileSync(`/proc/${pid}/environ`, 'latin1'); } catch { return null; }
  for (const kv of env.split('\0')) if (kv.startsWith('TSNAP_TEST_OWNER=')) return kv.slice('TSNAP_TEST_OWNER='.length);
  return null;
}

/** Live (not zombie) processes whose owner marker satisfies `match`. */
export function markedProcesses(match: (owner: string) => boolean): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    const owner = ownerOf(pid);
    if (owner !== null && match(owner) && !isGone(pid)) out.push(pid);
  }
  return out;
}

/** Every live descendant of `pid` (through /proc/PID/task/TID/children). */
export function descendantsOf(pid: number): number[] {
  const out: number[] = [];
  const walk = (p: number) => {
    let tids: string[];
    try { tids = readdirSync(`/proc/${p}/task`); } catch { return; }
    for (const t of tids) {
      let kids: string[] = [];
      try { kids = readFileSync(`/proc/${p}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean); } catch { /* gone */ }
      for (const k of kids.map(Number)) {
        if (!isGone(k)) out.push(k);
        walk(k);
      }
    }
  };
  walk(pid);
  return out;
}

/** Records a process a test started or restored (also one whose env lacks the marker). */
export function registerPid(pid: number): void {
  const t = startTime(pid);
  if (t !== null) registered.set(pid, t);
}

export function isGone(pid: number): boolean {
  try {
    return /^State:\s+[ZX]/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return true;
  }
}

function sigkill(pid: number): void {
  try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
}

/** SIGKILL by pid and wait until it is gone (or a zombie, for its parent to reap). */
export async function killPid(pid: number): Promise<void> {
  sigkill(pid);
  for (let i = 0; i < 500 && !isGone(pid); i++) await new Promise((r) => setTimeout(r, 10));
}

/** SIGKILL a process and every descendant it has (found first: once it dies they are reparented). */
export async function killTree(pid: number): Promise<void> {
  const all = [pid, ...descendantsOf(pid)];
  for (const p of all) sigkill(p);
  for (const p of all) await killPid(p);
}

/**
 * Kills every process of this worker: those registered (if still the same
 * process: pids are reused) and those carrying its marker, found again
 * until none is left (one may fork while the others are being killed).
 */
export async function killOwnProcesses(): Promise<number[]> {
  const killed: number[] = [];
  const names = new Map<number, string>();
  for (let pass = 0; pass < 20; pass++) {
    // Children of this worker too: one just forked has not exec'd yet and
    // still shows the worker's own environment, without the marker.
    const pids = new Set([...markedProcesses((o) => o === OWNER), ...descendantsOf(process.pid)]);
    for (const [pid, t] of registered) if (startTime(pid) === t && !isGone(pid)) pids.add(pid);
    if (pids.size === 0) break;
    for (const pid of pids) names.set(pid, commOf(pid));
    for (const pid of pids) sigkill(pid);
    for (const pid of pids) await killPid(pid);
    killed.push(...pids);
  }
  registered.clear();
  lastNames = names;
  return killed;
}

let lastNames = new Map<number, string>();

function commOf(pid: number): string {
  try { return readFileSync(`/proc/${pid}/comm`, 'utf8').trim(); } catch { return '?'; }
}

function describeProcess(pid: number): string {
  return `${pid} (${lastNames.get(pid) ?? commOf(pid)})`;
}


/**
 * The pid tracing a thread, or 0. A thread that has ended meanwhile (its
 * /proc entry gone) is traced by nobody: 0 too.
 */
/**
 * The tracer a running tsnap holds its targets with: its tsnap-guardian
 * (src/guardian), a child process of its own; tsnap itself when it has none
 * (restore traces directly).
 */
export function tracerFor(tsnapPid: number): number {
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(rest[1]) === tsnapPid && readFileSync(`/proc/${name}/comm`, 'utf8').trim() === 'tsnap-guardian') return Number(name);
    } catch { /* gone */ }
  }
  return tsnapPid;
}

export function tracerOf(tid: number): number {
  let status: string;
  try {
    status = readFileSync(`/proc/${tid}/status`, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') return 0;
    throw err;
  }
  return Number(/^TracerPid:\s*(\d+)/m.exec(status)?.[1] ?? 0);
}

/**
 * Waits (up to `timeoutMs`) until none of `pids` exists, not even as a
 * zombie: init reaps orphans 1.3-2 s late here, later still on a loaded
 * machine; the wait ends as soon as they are free.
 */
export async function waitPidsFree(pids: number[], timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (const pid of pids) while (existsSync(`/proc/${pid}`) && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
}

/** Something a test started, with its own way to end (a fixture waits for its exit event, a restored process takes its children along). */
export interface Started {
  readonly pid: number;
  end(): Promise<void>;
}

/** With the start time it had when tracked: a pid reused since by another process is not this one. */
const started = new Map<Started, number | null>();

/** Ended by the next cleanup, unless it goes first (`done`: it has ended on its own). */
export function track(s: Started, done?: Promise<unknown>): void {
  registerPid(s.pid);
  started.set(s, startTime(s.pid));
  void done?.then(() => started.delete(s));
}

/** A child of this worker (a feeder, a server, a tsnap): SIGKILLed and waited for, so that nothing of it is left when the test ends. */
export function trackChild(child: ChildProcess): void {
  if (child.pid === undefined) return;
  const exited = child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve()
    : new Promise<void>((res) => child.once('exit', () => res()));
  track({ pid: child.pid, end: async () => { child.kill('SIGKILL'); await exited; } }, exited);
}

/** A process a restore made (its children go with it). */
export function trackRestored(pid: number): void {
  const t = startTime(pid);
  track({ pid, end: async () => { if (t !== null && startTime(pid) === t) await killTree(pid); } });
}

/**
 * Ends everything tracked. What the processes forked (a tree fixture's
 * children) goes with them: listed before they die, as their orphans are
 * reparented. Throws (all of them) if one cannot be ended.
 */
export async function endStarted(): Promise<void> {
  const all = [...started];
  started.clear();
  const forks = all.filter(([s, t]) => t !== null && startTime(s.pid) === t).flatMap(([s]) => descendantsOf(s.pid));
  for (const pid of forks) sigkill(pid);
  const results = await Promise.allSettled(all.map(([s]) => s.end()));
  for (const pid of forks) await killPid(pid);
  const errors = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []));
  if (errors.length) throw new AggregateError(errors, `cleanup: ${errors.map((e) => e.message).join('; ')}`);
}

/** The one cleanup: afterEach(endStarted) for the calling test file or describe block. */
export function useProcessCleanup(): void {
  afterEach(endStarted);
}

/**
 * Restore helpers left behind: reparented to init (their tsnap is gone) and
 * still there `graceMs` later. One whose parent lives belongs to a restore in
 * progress (maybe another suite's, or a bench's). One that goes within the
 * grace was dying with its killed tsnap (test/killed-restore.test.ts kills
 * tsnaps mid-restore in another worker of the same run).
 */
export async function leftRestoreHelpers(graceMs = 5000): Promise<number[]> {
  const orphans = (): number[] => {
    const out: number[] = [];
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      try {
        const stat = readFileSync(`/proc/${name}/stat`, 'latin1');
        const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        if (comm.startsWith('tsnap-restore-h') && ppid === 1) out.push(Number(name));
      } catch { /* gone meanwhile */ }
    }
    return out;
  };
  let left = orphans();
  const end = Date.now() + graceMs;
  while (left.length > 0 && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 50));
    const now = new Set(orphans());
    left = left.filter((pid) => now.has(pid));
  }
  return left;
}

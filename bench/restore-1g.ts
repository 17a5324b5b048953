/**
 * `node dist/bench/restore-1g.js`: restore of a process with BENCH_MIB
 * (1024) MiB of written private memory, tsnap against CRIU in the same run,
 * interleaved, medians of BENCH_REPS (5) after a warm-up of each:
 *   tsnap    restore() with the default self-check, new pid, until the
 *            process runs;
 *   criu     `criu restore -d` (or $TSNAP_CRIU), wall until criu exits with
 *            the process running (same pid: each run waits for it to be free);
 * and the CPU time of each (tsnap's own and the new task's; criu's and its task's).
 * Images in BENCH_DIR (/dev/shm), uncompressed, as CRIU's are.
 *
 * BENCH_AB_OTHER=/path/to/other/checkout (its dist/ built): that build's
 * restore() too (A; this build is B), interleaved with the others in an
 * order that alternates per run, and the ratios B / A. BENCH_R1G_CLI=1:
 * every tsnap restore is a cold `tsnap restore --new-pid --detach` of the
 * build's own bin/tsnap instead (wall until it exits; CPU of tsnap, its
 * helper and the new task, from the children's 10 ms ticks and the task's
 * schedstat). BENCH_AB_ENV='KEY=VALUE ...': environment variables set for A's
 * restores only (with BENCH_AB_OTHER naming this checkout: a switch
 * against its default, in one build).
 */
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL, fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { dump } from '../src/dump/dump.js';
import { restore } from '../src/restore/restore.js';
import { ptrace, kill, setCloexec } from '../src/sys/index.js';
import { findCriu, criuDumpFixture, criuRestore, killAndWaitGone, taskCpuMs, adoptRestorees } from './criu.js';

const MIB = Number(process.env.BENCH_MIB ?? 1024);
const REPS = Number(process.env.BENCH_REPS ?? 5);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';
const OTHER = process.env.BENCH_AB_OTHER ?? null;
const CLI = process.env.BENCH_R1G_CLI === '1';
/** This checkout (dist/bench/ -> ../..). */
const SELF = fileURLToPath(new URL('../..', import.meta.url));

/** CPU ms of every thread of `pid` so far (schedstat: ns precision). */
function schedMs(pid: number): number {
  let ns = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
  return ns / 1e6;
}

function childrenCpuMs(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  return (Number(stat[13]) + Number(stat[14])) * 10;
}

const FIXTURE = `
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include <fcntl.h>
int main(int argc, char **argv) {
  size_t n = (size_t)atol(argv[1]) << 20;
  for (int fd = 3; fd < 1024; fd++) close(fd);
  uint64_t *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 1;
  for (size_t i = 0; i < n / 8; i++) p[i] = i * 0x9E3779B97F4A7C15ull;
  printf("ready\\n");
  fflush(stdout);
  // criu refuses a pipe to the outside: stdio becomes /dev/null.
  int null = open("/dev/null", O_RDWR);
  dup2(null, 0); dup2(null, 1); dup2(null, 2); close(null);
  for (;;) pause();
}
`;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  // criu -d's and the cold CLI's tasks become ours to reap when their parents exit: their pids free at once.
  adoptRestorees();
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-restore1g-'));
  const bin = join(work, 'big');
  writeFileSync(`${bin}.c`, FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, `${bin}.c`]);
  const start = async () => {
    const c = spawn(bin, [String(MIB)], { stdio: ['ignore', 'pipe', 'ignore'] });
    await new Promise((resolve) => createInterface({ input: c.stdout! }).once('line', resolve));
    return c;
  };
  const criu = findCriu();
  const dir = join(OUT_ROOT, `tsnap-bench-restore1g-${process.pid}`);
  const criuDir = join(OUT_ROOT, `tsnap-bench-restore1g-criu-${process.pid}`);
  // Signalled through Node's handles, which refuse once a child is reaped: a bare pid could name someone else by then.
  const started: ReturnType<typeof spawn>[] = [];
  try {
    const a = await start();
    started.push(a);
    await dump({ pid: a.pid!, dir });
    const dumpForCriu = () => criuDumpFixture(criu!, start, criuDir, started);
    if (criu) await dumpForCriu();
    const restoreA = OTHER ? (await import(pathToFileURL(resolve(OTHER, 'dist/src/restore/restore.js')).href) as { restore: typeof restore }).restore : null;
    const pidfile = join(work, 'pid');
    const inProcess = async (fn: typeof restore) => {
      const c0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      const r = await fn({ dir, newPid: true });
      const wall = Number(process.hrtime.bigint() - t0) / 1e6;
      const c = process.cpuUsage(c0);
      const task = schedMs(r.pid);
      kill(r.pid, 9);
      try { ptrace.waitpidBlocking(r.pid); } catch { /* reaped */ }
      return { wall, cpu: (c.user + c.system) / 1000 + task };
    };
    const cold = async (root: string) => {
      rmSync(pidfile, { force: true });
      const c0 = childrenCpuMs();
      const t0 = process.hrtime.bigint();
      const r = spawnSync(process.execPath, [join(root, 'bin/tsnap'), 'restore', '--dir', dir, '--new-pid', '--detach', '--pidfile', pidfile, '--stdin', '/dev/null', '--stdout', '/dev/null', '--stderr', '/dev/null'], { stdio: ['ignore', 'ignore', 'pipe'] });
      const wall = Number(process.hrtime.bigint() - t0) / 1e6;
      if (r.status !== 0) throw new Error(`${root}: tsnap restore failed (${r.status}): ${String(r.stderr).trim()}`);
      const pid = Number(readFileSync(pidfile, 'utf8').trim());
      const cpu = childrenCpuMs() - c0 + schedMs(pid);
      // Reaped, not only killed: left to PID 1, its pid stays taken for 1-2 s, and after the
      // counter wraps that can be the pid CRIU's next rep must reuse.
      await killAndWaitGone(pid);
      return { wall, cpu };
    };
    const tsnapOnce = async () => (CLI ? cold(SELF) : inProcess(restore));
    // BENCH_AB_ENV=KEY=VALUE: set for A's restores only (A may be this checkout: a switch against its default).
    // Several as 'KEY=VALUE KEY2=VALUE2'.
    const envA = (process.env.BENCH_AB_ENV ?? '').split(' ').filter(Boolean).map((kv) => kv.split('='));
    const otherOnce = async () => {
      for (const [k, ...v] of envA) process.env[k] = v.join('=');
      try {
        return await (CLI ? cold(OTHER!) : inProcess(restoreA!));
      } finally {
        for (const [k] of envA) delete process.env[k];
      }
    };
    const criuOnce = async () => {
      const r = await criuRestore(criu!, criuDir, { redump: dumpForCriu });
      const task = taskCpuMs(r.pid) ?? 0;
      await killAndWaitGone(r.pid);
      return { wall: r.ms, cpu: task + r.criuCpuMs };
    };
    type Run = { wall: number; cpu: number };
    const kinds: { name: string; once: () => Promise<Run>; runs: Run[] }[] = [{ name: 'tsnap', once: tsnapOnce, runs: [] }];
    if (OTHER) kinds.push({ name: 'A', once: otherOnce, runs: [] });
    if (criu) kinds.push({ name: 'criu', once: criuOnce, runs: [] });
    for (const k of kinds) await k.once();
    const load0 = loadavg()[0];
    for (let i = 0; i < REPS; i++) {
      // Rotated per run: none always follows the same one.
      for (let j = 0; j < kinds.length; j++) {
        const k = kinds[(i + j) % kinds.length];
        k.runs.push(await k.once());
      }
    }
    const med = (name: string, f: 'wall' | 'cpu') => {
      const k = kinds.find((x) => x.name === name);
      return k ? median(k.runs.map((x) => x[f])) : null;
    };
    const tw = med('tsnap', 'wall')!;
    const cw = med('criu', 'wall');
    const aw = med('A', 'wall');
    console.log(`${MIB} MiB restore${CLI ? ' (CLI, cold)' : ''}, ${REPS} each (load ${load0.toFixed(1)}-${loadavg()[0].toFixed(1)}): tsnap ${tw.toFixed(0)} ms (CPU, tsnap + task, ${med('tsnap', 'cpu')!.toFixed(0)} ms)`
      + (cw !== null ? `, CRIU ${cw.toFixed(0)} ms (CPU, criu + task, ${med('criu', 'cpu')!.toFixed(0)} ms): tsnap / CRIU ${(tw / cw).toFixed(2)}` : '; criu not found: no CRIU figure')
      + (aw !== null ? `; A (${OTHER}${process.env.BENCH_AB_ENV ? `, ${process.env.BENCH_AB_ENV}` : ''}) ${aw.toFixed(0)} ms (CPU ${med('A', 'cpu')!.toFixed(0)} ms)${cw !== null ? `, A / CRIU ${(aw / cw).toFixed(2)}` : ''}; B / A: wall ${(tw / aw).toFixed(3)}, CPU ${(med('tsnap', 'cpu')! / med('A', 'cpu')!).toFixed(3)}` : ''));
  } finally {
    for (const c of started) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    rmSync(criuDir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });

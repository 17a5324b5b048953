/**
 * `npm run bench` (part) and `node dist/bench/vmas.js`: restore of a
 * process with many VMAs (BENCH_VMAS, 10 000 by default: one page each,
 * protections alternating so none merge, every other page written).
 * Batched address-space setup (one remote step per 2048 calls) against
 * one remote syscall per call (TSNAP_REMOTE_BATCH=0), in the same run,
 * medians of BENCH_REPS (5) after BENCH_WARMUP (6) warm-ups of each (the
 * JIT: see below). BENCH_VMAS_DETAIL=1 prints every run (wall/CPU ms).
 * The restore time is
 * restore()'s own, process running, with the self-check off and with it
 * on (the default: it reads /proc/PID/smaps and maps of the new process).
 * With `criu` installed (or $TSNAP_CRIU), CRIU's restore of the same
 * process (criu restore -d: wall until criu exits) in the same run,
 * interleaved, as the ratio tsnap / CRIU. Also the CPU time spent (tsnap's
 * own, plus the new task's, read from /proc before it is killed), which a
 * loaded machine inflates far less than the wall time.
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dump } from '../src/dump/dump.js';
import { restore } from '../src/restore/restore.js';
import { ptrace, kill, setCloexec } from '../src/sys/index.js';
import { findCriu, criuDumpFixture, criuRestore, killAndWaitGone, taskCpuMs, adoptRestorees } from './criu.js';
import { VMAS_FIXTURE as FIXTURE } from './vmas-fixture.js';

const VMAS = Number(process.env.BENCH_VMAS ?? 10_000);
const REPS = Number(process.env.BENCH_REPS ?? 5);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 6);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';


const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  // criu -d's task becomes ours to reap when criu exits: its pid, the one the next rep reuses, frees at once.
  adoptRestorees();
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-vmas-'));
  const bin = join(work, 'vmas');
  writeFileSync(`${bin}.c`, FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, `${bin}.c`]);
  const start = async () => {
    const c = spawn(bin, [String(VMAS)], { stdio: ['ignore', 'pipe', 'ignore'] });
    await new Promise((resolve) => createInterface({ input: c.stdout! }).once('line', resolve));
    return c;
  };
  const child = await start();
  const dir = join(OUT_ROOT, `tsnap-bench-vmas-${child.pid}`);
  const criuDir = join(OUT_ROOT, `tsnap-bench-vmas-criu-${child.pid}`);
  const criu = findCriu();
  rmSync(dir, { recursive: true, force: true });
  const forCriu: ReturnType<typeof spawn>[] = [];
  try {
    await dump({ pid: child.pid!, dir });
    await new Promise((resolve) => child.once('exit', resolve));
    const dumpForCriu = () => criuDumpFixture(criu!, start, criuDir, forCriu);
    if (criu) await dumpForCriu();
    type Run = { wall: number; cpu: number; task: number };
    const once = async (batched: boolean, check: 'off' | 'warn' = 'off'): Promise<Run> => {
      if (batched) delete process.env.TSNAP_REMOTE_BATCH;
      else process.env.TSNAP_REMOTE_BATCH = '0';
      const c0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      const r = await restore({ dir, newPid: true, check });
      const wall = ms(t0);
      const c = process.cpuUsage(c0);
      const taskMs = taskCpuMs(r.pid) ?? 0;
      kill(r.pid, 9);
      try { ptrace.waitpidBlocking(r.pid); } catch { /* reaped */ }
      return { wall, cpu: (c.user + c.system) / 1000 + taskMs, task: taskMs };
    };
    const criuOnce = async (): Promise<{ wall: number; task: number; cpu: number }> => {
      const r = await criuRestore(criu!, criuDir, { redump: dumpForCriu });
      const task = taskCpuMs(r.pid) ?? 0;
      await killAndWaitGone(r.pid);
      return { wall: r.ms, task, cpu: task + r.criuCpuMs };
    };
    // tsnap runs in this process: its first restores run the interpreter's code,
    // not the optimised one (CPU per check-on restore, consecutive: ~330, 270,
    // 135-150 until the 12th, then 100-130 ms). One warm-up left the medians of 5
    // on that slope; CRIU, a compiled program, has none.
    for (let i = 0; i < WARMUP; i++) {
      await once(false);
      await once(true);
      await once(true, 'warn');
      if (criu) await criuOnce();
    }
    const one: Run[] = [];
    const batch: Run[] = [];
    const checked: Run[] = [];
    const criuRuns: { wall: number; task: number; cpu: number }[] = [];
    for (let i = 0; i < REPS; i++) {
      one.push(await once(false));
      batch.push(await once(true));
      checked.push(await once(true, 'warn'));
      if (criu) criuRuns.push(await criuOnce());
    }
    if (process.env.BENCH_VMAS_DETAIL) {
      for (const [n, xs] of [['one', one], ['batch', batch], ['checked', checked], ['criu', criuRuns]] as const) console.log(n, xs.map((x) => `${x.wall.toFixed(0)}/${x.cpu.toFixed(0)}`).join(' '));
    }
    const wall = (xs: { wall: number }[]) => median(xs.map((x) => x.wall));
    const cpu = (xs: Run[]) => median(xs.map((x) => x.cpu));
    const o = wall(one);
    const b = wall(batch);
    const k = wall(checked);
    const cr = criu ? wall(criuRuns) : null;
    // criu's own CPU comes in 10 ms ticks (cutime): a coarse ratio.
    const crCpu = criu ? median(criuRuns.map((x) => x.cpu)) : null;
    console.log(`${VMAS} VMAs restore (load ${loadavg()[0].toFixed(1)}): one remote syscall per call ${o.toFixed(1)} ms, batched ${b.toFixed(1)} ms (${(b / o).toFixed(3)}), batched with the self-check ${k.toFixed(1)} ms`
      + (cr !== null ? `; CRIU ${cr.toFixed(1)} ms (CPU, criu + task, ${crCpu!.toFixed(0)} ms, of which its task ${median(criuRuns.map((x) => x.task)).toFixed(0)}): tsnap / CRIU ${(b / cr).toFixed(2)} check off, ${(k / cr).toFixed(2)} with the check; CPU ${(cpu(batch) / crCpu!).toFixed(2)} and ${(cpu(checked) / crCpu!).toFixed(2)}` : '; criu not found: no CRIU figure')
      + `; CPU (tsnap + task): ${cpu(one).toFixed(0)} ms, batched ${cpu(batch).toFixed(0)} ms (${(cpu(batch) / cpu(one)).toFixed(3)}), with the check ${cpu(checked).toFixed(0)} ms; of which the task's own ${median(one.map((x) => x.task)).toFixed(0)} / ${median(batch.map((x) => x.task)).toFixed(0)} ms`);
  } finally {
    delete process.env.TSNAP_REMOTE_BATCH;
    // Through Node's handles, which refuse once a child is reaped: by then its bare pid may name someone else.
    child.kill('SIGKILL');
    for (const c of forCriu) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    rmSync(criuDir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });

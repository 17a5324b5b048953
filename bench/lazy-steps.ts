/**
 * Where restore --lazy spends its time to running, step by step: run with
 * TSNAP_TRACE=1 and stderr to a file, then `node dist/bench/lazy-steps.js
 * --report FILE`. BENCH_LAZY_MIB sizes (default 64,1024), BENCH_REPS runs.
 */
import { LAZY_FIXTURE } from './lazy-fixture.js';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, readdirSync, openSync, closeSync, constants } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dump } from '../src/dump/dump.js';
import { restore } from '../src/restore/restore.js';
import { ptrace, kill, setCloexec } from '../src/sys/index.js';
import { mark } from '../src/trace.js';
import { PerformanceObserver, performance } from 'node:perf_hooks';

const gcs: { start: number; dur: number }[] = [];
new PerformanceObserver((l) => { for (const e of l.getEntries()) gcs.push({ start: e.startTime, dur: e.duration }); }).observe({ entryTypes: ['gc'] });

const SIZES = (process.env.BENCH_LAZY_MIB ?? '64,1024').split(',').map(Number);
const REPS = Number(process.env.BENCH_REPS ?? 5);
/** BENCH_AB=NAME: runs alternate NAME=0 and NAME=1 (an A/B switch read per restore), reported apart. */
const AB = process.env.BENCH_AB;

function report(file: string): void {
  // Per run: label -> ms from "bench: restore" to the next mark.
  const runs: { size: string; steps: [string, number][]; total: number }[] = [];
  let cur: { size: string; steps: [string, number][]; total: number } | null = null;
  let last = 0;
  let lastLabel = '';
  let t0 = 0;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const m = /^tsnap-trace \d+ ([\d.]+) (.*)$/.exec(line);
    if (!m) continue;
    const t = Number(m[1]);
    const label = m[2];
    if (label.startsWith('bench: restore ')) {
      cur = { size: label.slice(15), steps: [], total: 0 };
      runs.push(cur);
      t0 = last = t;
      lastLabel = 'restore() start';
      continue;
    }
    if (!cur) continue;
    cur.steps.push([lastLabel.replace(/\b\d{3,}\b/g, 'N'), t - last]);
    last = t;
    lastLabel = label;
    if (label === 'bench: running') { cur.total = t - t0; cur = null; }
  }
  const bySize = new Map<string, typeof runs>();
  for (const r of runs) bySize.set(r.size, [...(bySize.get(r.size) ?? []), r]);
  for (const [size, rs] of bySize) {
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    console.log(`${size}: ${rs.length} runs, running median ${med(rs.map((r) => r.total)).toFixed(1)} ms, min ${Math.min(...rs.map((r) => r.total)).toFixed(1)}`);
    const labels = [...new Set(rs.flatMap((r) => r.steps.map((s) => s[0])))];
    for (const l of labels) {
      const xs = rs.map((r) => r.steps.filter((s) => s[0] === l).reduce((a, s) => a + s[1], 0));
      console.log(`  ${med(xs).toFixed(2).padStart(8)} ms  (min ${Math.min(...xs).toFixed(2)})  ${l}`);
    }
  }
}

async function main(): Promise<void> {
  if (process.argv[2] === '--report') { report(process.argv[3]); return; }
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-lazysteps-'));
  const bin = join(work, 'touch');
  writeFileSync(`${bin}.c`, LAZY_FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, `${bin}.c`]);
  const fifo = join(work, 'in');
  execFileSync('mkfifo', [fifo]);
  const inFd = openSync(fifo, constants.O_RDWR);
  try {
    for (const mib of SIZES) {
      const child = spawn(bin, [String(mib)], { stdio: ['pipe', 'pipe', 'inherit'] });
      await new Promise((resolve) => createInterface({ input: child.stdout! }).once('line', resolve));
      const dir = join('/dev/shm', `tsnap-bench-lazysteps-${child.pid}`);
      await dump({ pid: child.pid!, dir });
      await new Promise((resolve) => child.once('exit', resolve));
      for (let i = 0; i <= REPS * (AB ? 2 : 1); i++) {
        const variant = AB ? `${AB}=${i % 2}` : '';
        if (AB) process.env[AB] = String(i % 2);
        (globalThis as { gc?: () => void }).gc?.();
        const p0 = performance.now();
        const c0 = process.cpuUsage();
        mark(`bench: restore ${i === 0 ? 'warmup' : `${mib} MiB ${variant}`}`);
        const r = await restore({ dir, newPid: true, stdin: fifo, stdout: '/dev/null', check: 'warn', lazy: { detach: false } });
        mark('bench: running');
        const p1 = performance.now();
        const cpu = process.cpuUsage(c0);
        await new Promise((res) => setImmediate(res));
        const inRun = gcs.filter((g) => g.start >= p0 && g.start < p1);
        console.log(`${mib} MiB ${variant} run ${i}: ${(p1 - p0).toFixed(1)} ms, tsnap cpu ${((cpu.user + cpu.system) / 1000).toFixed(1)} ms, gc ${inRun.length} x, ${inRun.reduce((a, g) => a + g.dur, 0).toFixed(1)} ms`);
        await r.lazy!.finish();
        kill(r.pid, 9);
        try { ptrace.waitpidBlocking(r.pid); } catch { /* reaped */ }
      }
      rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    closeSync(inFd);
    rmSync(work, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });

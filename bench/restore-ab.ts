/**
 * `BENCH_AB_OTHER=/path/to/other/checkout node dist/bench/restore-ab.js`:
 * one image of the bench/vmas.ts process (BENCH_VMAS, 10 000 VMAs),
 * restored in this process alternately by the other checkout's build (A,
 * its dist/ must be built) and by this one (B), BENCH_REPS (30) times each
 * after 3 warm-ups of each, in the order ABBA... so that neither always
 * comes second. Medians of the wall time of restore() and of the CPU time
 * (tsnap's own, plus the new task's from /proc/PID/schedstat, read before
 * it is killed), and the ratios B / A. On a loaded machine the wall time
 * swings 2x between runs; the CPU ratio is what to read. An A/A run (the
 * same checkout twice) shows the noise; BENCH_AB_ENV=KEY=VALUE sets an
 * environment variable for A's restores only (an env switch against its
 * default in one build). BENCH_AB_CHECK: the self-check ('warn', the
 * default, or 'off'). BENCH_AB_A_PLAIN=1: A restores a copy of the image
 * whose process file is plain msgpack maps, as written before records
 * (formats/image-v1.md "Records in the process file"), B the image as
 * written.
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync, readFileSync, cpSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createInterface } from 'node:readline';
import { dump } from '../src/dump/dump.js';
import { restore } from '../src/restore/restore.js';
import { ptrace, kill, setCloexec } from '../src/sys/index.js';
import { VMAS_FIXTURE } from './vmas-fixture.js';
import { readMetaFile, writeMetaFile } from '../src/image/metadata.js';
import { FileKind, type Inventory } from '../formats/schema.js';

const VMAS = Number(process.env.BENCH_VMAS ?? 10_000);
const REPS = Number(process.env.BENCH_REPS ?? 30);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';
const CHECK = (process.env.BENCH_AB_CHECK ?? 'warn') as 'warn' | 'off';

type Restore = typeof restore;

/** CPU ms of every thread of `pid` so far (ns precision, unlike /proc/PID/stat's 10 ms ticks). */
function schedMs(pid: number): number {
  let ns = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
  return ns / 1e6;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  const other = process.env.BENCH_AB_OTHER;
  if (!other) throw new Error('BENCH_AB_OTHER: the checkout to compare with (its dist/ built)');
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const restoreA = (await import(pathToFileURL(resolve(other, 'dist/src/restore/restore.js')).href) as { restore: Restore }).restore;
  const envA = process.env.BENCH_AB_ENV?.split('=') ?? null;
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-ab-'));
  const bin = join(work, 'vmas');
  writeFileSync(`${bin}.c`, VMAS_FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, `${bin}.c`]);
  const child = spawn(bin, [String(VMAS)], { stdio: ['ignore', 'pipe', 'ignore'] });
  await new Promise((r) => createInterface({ input: child.stdout! }).once('line', r));
  const dir = join(OUT_ROOT, `tsnap-bench-ab-${child.pid}`);
  try {
    await dump({ pid: child.pid!, dir });
    const dirA = process.env.BENCH_AB_A_PLAIN === '1' ? plainCopy(dir) : dir;
    const runs = { A: { wall: [] as number[], cpu: [] as number[] }, B: { wall: [] as number[], cpu: [] as number[] } };
    const once = async (which: 'A' | 'B', keep: boolean) => {
      if (envA) {
        if (which === 'A') process.env[envA[0]] = envA.slice(1).join('=');
        else delete process.env[envA[0]];
      }
      const c0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      const r = await (which === 'A' ? restoreA : restore)({ dir: which === 'A' ? dirA : dir, newPid: true, check: CHECK });
      const wall = Number(process.hrtime.bigint() - t0) / 1e6;
      const c = process.cpuUsage(c0);
      const task = schedMs(r.pid);
      kill(r.pid, 9);
      try { ptrace.waitpidBlocking(r.pid); } catch { /* reaped */ }
      if (keep) { runs[which].wall.push(wall); runs[which].cpu.push((c.user + c.system) / 1000 + task); }
    };
    for (let i = 0; i < 3; i++) { await once('A', false); await once('B', false); }
    const load0 = loadavg()[0];
    for (let i = 0; i < REPS; i++) {
      for (const w of (i % 2 ? ['A', 'B'] : ['B', 'A']) as ('A' | 'B')[]) await once(w, true);
    }
    const a = { wall: median(runs.A.wall), cpu: median(runs.A.cpu) };
    const b = { wall: median(runs.B.wall), cpu: median(runs.B.cpu) };
    console.log(`${VMAS} VMAs restore, check ${CHECK}, ${REPS} each (load ${load0.toFixed(1)}-${loadavg()[0].toFixed(1)}): A (${other}${envA ? `, ${envA.join('=')}` : ''}${dirA !== dir ? ', plain process file' : ''}) wall ${a.wall.toFixed(1)} ms, CPU ${a.cpu.toFixed(1)} ms; B wall ${b.wall.toFixed(1)} ms, CPU ${b.cpu.toFixed(1)} ms; B / A: wall ${(b.wall / a.wall).toFixed(3)}, CPU ${(b.cpu / a.cpu).toFixed(3)}`);
  } finally {
    delete process.env[envA?.[0] ?? ''];
    try { kill(child.pid!, 9); } catch { /* gone */ }
    rmSync(dir, { recursive: true, force: true });
    rmSync(`${dir}-plain`, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

/** A copy of image `dir` whose process file is plain msgpack maps (TSNAP_IMAGE_RECORDS=0). */
function plainCopy(dir: string): string {
  const to = `${dir}-plain`;
  cpSync(dir, to, { recursive: true });
  const proc = readMetaFile(to, FileKind.Process);
  const inv = readMetaFile<Inventory>(to, FileKind.Inventory);
  rmSync(join(to, 'process'));
  process.env.TSNAP_IMAGE_RECORDS = '0';
  try {
    inv.files.process = writeMetaFile(to, FileKind.Process, proc);
  } finally {
    delete process.env.TSNAP_IMAGE_RECORDS;
  }
  rmSync(join(to, 'inventory'));
  writeMetaFile(to, FileKind.Inventory, inv);
  return to;
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });

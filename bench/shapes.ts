/**
 * `npm run bench` (part): how the shape of a program costs. Dump (frozen
 * time, --leave-running), pre-dump and restore of
 *   single   one process, one thread
 *   threads  one process, 32 threads
 *   tree     8 processes (a parent and 7 children)
 * each process holding BENCH_SHAPE_MIB (64) MiB of its own written memory,
 * reported as ratios to the single case measured in the same run; for the
 * tree also per process. Medians of BENCH_REPS (3) after a warm-up.
 *
 * The fixtures are started through `sh -c '... &'` so that this process is
 * not their parent: restore runs through the CLI and brings back the same
 * pids, which must not be children libuv once knew.
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dump, preDump } from '../src/dump/dump.js';
import { dumpTree, listTree } from '../src/dump/tree.js';
import { untrackPid } from '../src/track/untrack.js';
import { kill, setCloexec } from '../src/sys/index.js';

const MIB = Number(process.env.BENCH_SHAPE_MIB ?? 64);
const REPS = Number(process.env.BENCH_REPS ?? 3);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';
const TSNAP_BIN = fileURLToPath(new URL('../../bin/tsnap', import.meta.url));

const FIXTURE = `
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static size_t n;
static void fill(void) {
  uint64_t *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t i = 0; i < n / 8; i++) p[i] = (i % 512 < 256) ? i * 0x9E3779B97F4A7C15ull + getpid() : (i & 0xff);
}
static void *idle(void *a) { (void)a; for (;;) { struct timespec t = {0, 50000000}; nanosleep(&t, 0); } return 0; }
int main(int argc, char **argv) {
  n = (size_t)atol(argv[3]) << 20;
  int k = atoi(argv[2]);
  /* Children fork before any filling: each process holds only its own memory. */
  if (strcmp(argv[1], "tree") == 0) for (int i = 1; i < k; i++) if (fork() == 0) { fill(); for (;;) pause(); }
  fill();
  if (strcmp(argv[1], "threads") == 0) { pthread_t t; for (int i = 1; i < k; i++) pthread_create(&t, 0, idle, 0); }
  usleep(200000);
  FILE *f = fopen(argv[4], "w"); fprintf(f, "%d\\n", getpid()); fclose(f);
  for (;;) idle(0);
}`;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function waitFor(cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('bench: timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

type Shape = 'single' | 'threads' | 'tree';
const COUNT: Record<Shape, number> = { single: 1, threads: 32, tree: 8 };

async function start(bin: string, work: string, shape: Shape): Promise<number[]> {
  const pidfile = join(work, `pid-${shape}-${Date.now()}`);
  spawn('sh', ['-c', `${bin} ${shape} ${COUNT[shape]} ${MIB} ${pidfile} >/dev/null 2>&1 </dev/null &`], { stdio: 'ignore' });
  await waitFor(() => existsSync(pidfile) && readFileSync(pidfile, 'utf8').endsWith('\n'));
  const root = Number(readFileSync(pidfile, 'utf8'));
  return listTree(root).map((m) => m.pid);
}

async function stop(pids: number[]): Promise<void> {
  for (const p of pids) { try { kill(p, 9); } catch { /* gone */ } }
  await waitFor(() => pids.every((p) => !existsSync(`/proc/${p}`)));
}

async function measure(bin: string, work: string, shape: Shape): Promise<{ dumpMs: number; frozenMs: number; preDumpMs: number; restoreMs: number }> {
  const pids = await start(bin, work, shape);
  const root = pids[0];
  const tree = shape === 'tree';
  const dir = () => mkdtempSync(join(OUT_ROOT, 'tsnap-shape-'));
  const rm = (d: string) => rmSync(d, { recursive: true, force: true });
  try {
    // dump --leave-running
    let d = dir();
    let t0 = process.hrtime.bigint();
    let frozenMs: number;
    if (tree) {
      rmSync(d, { recursive: true });
      frozenMs = (await dumpTree({ pid: root, dir: d, leaveRunning: true, fsync: false }, 'dump')).frozenUs / 1000;
    } else {
      frozenMs = (await dump({ pid: root, dir: d, leaveRunning: true, fsync: false })).stats.frozenUs / 1000;
    }
    const dumpMs = Number(process.hrtime.bigint() - t0) / 1e6;
    rm(d);
    // pre-dump (then end the trackings it started)
    d = dir();
    t0 = process.hrtime.bigint();
    if (tree) { rmSync(d, { recursive: true }); await dumpTree({ pid: root, dir: d }, 'predump'); } else await preDump({ pid: root, dir: d });
    const preDumpMs = Number(process.hrtime.bigint() - t0) / 1e6;
    for (const p of pids) untrackPid(p);
    rm(d);
    // restore: dump and kill, then tsnap restore --detach --json
    d = dir();
    if (tree) { rmSync(d, { recursive: true }); await dumpTree({ pid: root, dir: d, fsync: false }, 'dump'); } else await dump({ pid: root, dir: d, fsync: false });
    await waitFor(() => pids.every((p) => !existsSync(`/proc/${p}`)));
    const out = execFileSync(process.execPath, [TSNAP_BIN, 'restore', '--dir', d, '--detach', '--json'], { stdio: ['ignore', 'pipe', 'inherit'] }).toString();
    const restoreMs = JSON.parse(out.trim().split('\n').pop()!).stats.restoreUs / 1000;
    rm(d);
    return { dumpMs, frozenMs, preDumpMs, restoreMs };
  } finally {
    await stop(pids);
  }
}

async function main(): Promise<void> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-shapes-'));
  const bin = join(work, 'shape');
  writeFileSync(`${bin}.c`, FIXTURE);
  execFileSync('gcc', ['-O2', '-pthread', '-o', bin, `${bin}.c`]);
  try {
    await measure(bin, work, 'single'); // warm-up
    const res: Record<Shape, { dumpMs: number[]; frozenMs: number[]; preDumpMs: number[]; restoreMs: number[] }> = {
      single: { dumpMs: [], frozenMs: [], preDumpMs: [], restoreMs: [] },
      threads: { dumpMs: [], frozenMs: [], preDumpMs: [], restoreMs: [] },
      tree: { dumpMs: [], frozenMs: [], preDumpMs: [], restoreMs: [] },
    };
    for (let i = 0; i < REPS; i++) {
      for (const shape of ['single', 'threads', 'tree'] as Shape[]) {
        const m = await measure(bin, work, shape);
        for (const k of Object.keys(m) as (keyof typeof m)[]) res[shape][k].push(m[k]);
      }
    }
    const med = (s: Shape, k: keyof (typeof res)['single']) => median(res[s][k]);
    const ratio = (s: Shape, k: keyof (typeof res)['single'], per = 1) => +(med(s, k) / per / med('single', k)).toFixed(2);
    const report = {
      bench: 'shapes',
      mibPerProcess: MIB,
      reps: REPS,
      singleMs: { dump: +med('single', 'dumpMs').toFixed(1), frozen: +med('single', 'frozenMs').toFixed(1), preDump: +med('single', 'preDumpMs').toFixed(1), restore: +med('single', 'restoreMs').toFixed(1) },
      threads32VsSingle: { dump: ratio('threads', 'dumpMs'), frozen: ratio('threads', 'frozenMs'), preDump: ratio('threads', 'preDumpMs'), restore: ratio('threads', 'restoreMs') },
      tree8VsSingle: { dump: ratio('tree', 'dumpMs'), frozen: ratio('tree', 'frozenMs'), preDump: ratio('tree', 'preDumpMs'), restore: ratio('tree', 'restoreMs') },
      tree8PerProcessVsSingle: { dump: ratio('tree', 'dumpMs', 8), frozen: ratio('tree', 'frozenMs', 8), preDump: ratio('tree', 'preDumpMs', 8), restore: ratio('tree', 'restoreMs', 8) },
    };
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => { console.error(err); process.exit(1); });

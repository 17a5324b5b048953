/**
 * The frozen time of a dump, step by step (DumpStats.frozenParts), for a
 * process of BENCH_MIB MiB (default 1024) with a thread writing ~10 MB/s:
 *   - cow: `dump --leave-running --cow` (frozen: state, layout, protect);
 *   - final: the final round of an incremental dump after a pre-dump
 *     (frozen: state, layout, last scan, last delta);
 *   - state: the state collection alone (remote syscalls), STATE_REPS
 *     times on the target frozen once: the steadiest figure on a loaded
 *     machine.
 * Each is run with the frozen-time work of tsnap 0.1 (TSNAP_FROZEN_BASELINE=1:
 * every syscall its own guardian request, smaps read whole while frozen)
 * and as now, interleaved in the same run: the figures are the medians and
 * their ratio, now / baseline.
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dump, preDump } from '../src/dump/dump.js';
import { setCloexec, ProcMem } from '../src/sys/index.js';
import { FrozenSet } from '../src/freeze/frozen-set.js';
import { collectRemoteState } from '../src/state/task-state.save.js';
import type { DumpStats } from '../formats/schema.js';

const SIZE_MIB = Number(process.env.BENCH_MIB ?? 1024);
const REPS = Number(process.env.BENCH_REPS ?? 5);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';

const FIXTURE = `
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <signal.h>
#include <unistd.h>
static size_t n;
static volatile uint64_t *p;
static void on(int s) { (void)s; }
static void *writer(void *a) {
  (void)a;
  uint64_t r = 88172645463325252ull;
  for (;;) {
    for (int i = 0; i < 25; i++) { r ^= r << 13; r ^= r >> 7; r ^= r << 17; p[(r % (n / 4096)) * 512] = r; }
    usleep(10000);
  }
  return NULL;
}
int main(int argc, char **argv) {
  syscall(SYS_close_range, 3, ~0u, 0);
  for (int s = 1; s < 32; s++) if (s != SIGKILL && s != SIGSTOP && s != SIGCHLD) signal(s, on);
  n = (size_t)atol(argv[1]) << 20;
  p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t i = 0; i < n / 8; i++) p[i] = i * 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < 64; i++) mmap(0, 4096 * (i + 1), PROT_READ | (i % 2 ? PROT_WRITE : 0), MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  pthread_t t; pthread_create(&t, NULL, writer, NULL);
  printf("READY\\n"); fflush(stdout);
  for (;;) pause();
}`;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

type Fig = { frozenMs: number; stateMs: number; layoutMs: number; processMs: number; scanMs: number; cowArmMs: number; cowFrozenCopyPages: number; syscalls: number; requests: number };

function fig(s: DumpStats): Fig {
  const p = s.frozenParts!;
  return { frozenMs: s.frozenUs / 1000, stateMs: p.stateUs / 1000, layoutMs: p.layoutUs / 1000, processMs: p.processUs / 1000, scanMs: p.scanUs / 1000, cowArmMs: (s.cow?.armUs ?? 0) / 1000, cowFrozenCopyPages: s.cow?.pagesFrozenCopy ?? 0, syscalls: p.remoteSyscalls, requests: p.guardianCalls };
}

function medians(fs: Fig[]): Fig {
  const keys = Object.keys(fs[0]) as (keyof Fig)[];
  return Object.fromEntries(keys.map((k) => [k, +median(fs.map((f) => f[k])).toFixed(2)])) as Fig;
}

async function main(): Promise<void> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-frozen-'));
  const bin = join(work, 'frozenbench');
  writeFileSync(`${bin}.c`, FIXTURE);
  execFileSync('gcc', ['-O2', '-pthread', '-o', bin, `${bin}.c`]);
  const child = spawn(bin, [String(SIZE_MIB)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const pid = child.pid!;
  await new Promise<void>((resolve) => createInterface({ input: child.stdout! }).once('line', () => resolve()));
  const base = join(OUT_ROOT, `tsnap-bench-frozen-${pid}`);
  const withMode = async <T>(baseline: boolean, fn: () => Promise<T>): Promise<T> => {
    if (baseline) process.env.TSNAP_FROZEN_BASELINE = '1'; else delete process.env.TSNAP_FROZEN_BASELINE;
    try { return await fn(); } finally { delete process.env.TSNAP_FROZEN_BASELINE; }
  };
  const cowRun = (baseline: boolean) => withMode(baseline, async () => {
    rmSync(base, { recursive: true, force: true });
    const r = await dump({ pid, dir: base, leaveRunning: true, cow: true });
    rmSync(base, { recursive: true, force: true });
    await new Promise((res) => setTimeout(res, 200));
    return fig(r.stats);
  });
  const finalRun = (baseline: boolean) => withMode(baseline, async () => {
    rmSync(base, { recursive: true, force: true });
    await preDump({ pid, dir: join(base, 'pre') });
    await new Promise((r) => setTimeout(r, 300));
    const r = await dump({ pid, dir: join(base, 'final'), parent: join(base, 'pre'), leaveRunning: true, cow: false });
    rmSync(base, { recursive: true, force: true });
    // The final round ends the tracking: its holder must be gone before a copy-on-write dump registers the VMAs.
    await new Promise((res) => setTimeout(res, 500));
    return fig(r.stats);
  });
  try {
    await cowRun(true); await cowRun(false); await finalRun(true); await finalRun(false);
    const out: Record<string, { baseline: Fig[]; now: Fig[] }> = { cow: { baseline: [], now: [] }, final: { baseline: [], now: [] } };
    for (let i = 0; i < REPS; i++) {
      for (const baseline of [true, false]) {
        out.cow[baseline ? 'baseline' : 'now'].push(await cowRun(baseline));
        out.final[baseline ? 'baseline' : 'now'].push(await finalRun(baseline));
      }
    }
    const report = Object.fromEntries(Object.entries(out).map(([k, v]) => {
      const b = medians(v.baseline); const n = medians(v.now);
      return [k, { baseline: b, now: n, frozenRatio: +(n.frozenMs / b.frozenMs).toFixed(3) }];
    }));
    const state = withStateOnly(pid);
    console.log(JSON.stringify({ sizeMiB: SIZE_MIB, reps: REPS, load: readLoad(), ...report, state }, null, 2));
  } finally {
    child.kill('SIGKILL');
    rmSync(work, { recursive: true, force: true });
    rmSync(base, { recursive: true, force: true });
  }
}

const STATE_REPS = Number(process.env.BENCH_STATE_REPS ?? 30);

function withStateOnly(pid: number): { baselineMs: number; nowMs: number; ratio: number } {
  const set = FrozenSet.freeze(pid);
  const mem = new ProcMem(pid);
  const ms = { baseline: [] as number[], now: [] as number[] };
  try {
    for (let i = 0; i < STATE_REPS; i++) {
      for (const baseline of [true, false]) {
        if (baseline) process.env.TSNAP_FROZEN_BASELINE = '1'; else delete process.env.TSNAP_FROZEN_BASELINE;
        const t0 = process.hrtime.bigint();
        collectRemoteState(set.processes[0], mem);
        ms[baseline ? 'baseline' : 'now'].push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
    }
  } finally {
    delete process.env.TSNAP_FROZEN_BASELINE;
    mem.close();
    set.release();
  }
  const b = median(ms.baseline); const n = median(ms.now);
  return { baselineMs: +b.toFixed(2), nowMs: +n.toFixed(2), ratio: +(n / b).toFixed(3) };
}

function readLoad(): string {
  try { return execFileSync('cat', ['/proc/loadavg']).toString().trim(); } catch { return ''; }
}

main().catch((err) => { console.error(err); process.exit(1); });

/**
 * Copy-on-write dumps (`dump --leave-running --cow`) of a 1 GiB process,
 * against the frozen copy (`--no-cow`) and CRIU (`criu dump
 * --leave-running`, when `criu` is installed) in the same run, as ratios:
 *   - frozen time and total time, with the target idle and with a thread
 *     of it writing random pages as fast as it can;
 *   - the target's own cost per write during the dump: its writer times
 *     every store (clock_gettime around it), so a store that faulted and
 *     waited for tsnap shows up as a slow one.
 * Each figure is the median of REPS runs after a warm-up.
 */
import { spawn, execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { dump } from '../src/dump/dump.js';
import { setCloexec } from '../src/sys/index.js';

const SIZE_MIB = Number(process.env.BENCH_MIB ?? 1024);
const REPS = Number(process.env.BENCH_REPS ?? 3);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';

const FIXTURE = `
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static size_t n;
static uint64_t *p;
static atomic_int writing;
static atomic_ulong writes, sumns, slow, slowns, maxns;
static uint64_t ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000ull + t.tv_nsec; }
static void *writer(void *a) {
  (void)a;
  uint64_t r = 88172645463325252ull;
  for (;;) {
    if (!atomic_load(&writing)) { usleep(1000); continue; }
    r ^= r << 13; r ^= r >> 7; r ^= r << 17;
    volatile uint64_t *w = p + (r % (n / 4096)) * 512 + (r >> 40) % 512;
    uint64_t t0 = ns();
    *w = r;
    uint64_t d = ns() - t0;
    atomic_fetch_add(&writes, 1); atomic_fetch_add(&sumns, d);
    if (d > 5000) { atomic_fetch_add(&slow, 1); atomic_fetch_add(&slowns, d); }
    if (d > atomic_load(&maxns)) atomic_store(&maxns, d);
  }
  return NULL;
}
int main(int argc, char **argv) {
  syscall(SYS_close_range, 3, ~0u, 0);
  n = (size_t)atol(argv[1]) << 20;
  p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t i = 0; i < n / 8; i++) p[i] = (i % 512 < 256) ? i * 0x9E3779B97F4A7C15ull : (i & 0xff);
  pthread_t t; pthread_create(&t, NULL, writer, NULL);
  printf("READY\\n"); fflush(stdout);
  char line[64];
  while (fgets(line, sizeof line, stdin)) {
    if (!strncmp(line, "write", 5)) { writes = sumns = slow = slowns = maxns = 0; atomic_store(&writing, 1); printf("OK\\n"); }
    else if (!strncmp(line, "idle", 4)) { atomic_store(&writing, 0); usleep(3000); printf("OK\\n"); }
    else if (!strncmp(line, "stats", 5)) printf("STATS %lu %lu %lu %lu %lu\\n", writes, sumns, slow, slowns, maxns);
    fflush(stdout);
  }
  return 0;
}`;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

class Target {
  readonly pid: number;
  private readonly lines: Interface;
  private waiting: ((l: string) => void)[] = [];
  constructor(private readonly child: ReturnType<typeof spawn>) {
    this.pid = child.pid!;
    this.lines = createInterface({ input: child.stdout! });
    this.lines.on('line', (l) => this.waiting.shift()?.(l));
  }
  next(): Promise<string> { return new Promise((resolve) => this.waiting.push(resolve)); }
  async ask(cmd: string): Promise<string> { const l = this.next(); this.child.stdin!.write(`${cmd}\n`); return l; }
  async stats(): Promise<{ writes: number; meanNs: number; slow: number; slowMeanUs: number; maxUs: number }> {
    const [, w, s, sl, sln, mx] = (await this.ask('stats')).split(' ').map(Number);
    return { writes: w, meanNs: w ? s / w : 0, slow: sl, slowMeanUs: sl ? sln / sl / 1000 : 0, maxUs: mx / 1000 };
  }
  kill(): void { this.child.kill('SIGKILL'); }
}

async function main(): Promise<void> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-cow-'));
  const bin = join(work, 'cowbench');
  writeFileSync(`${bin}.c`, FIXTURE);
  execFileSync('gcc', ['-O2', '-pthread', '-o', bin, `${bin}.c`]);
  const t = new Target(spawn(bin, [String(SIZE_MIB)], { stdio: ['pipe', 'pipe', 'inherit'] }));
  const haveCriu = spawnSync('criu', ['--version']).status === 0;
  try {
    await t.next();
    const dir = join(OUT_ROOT, `tsnap-bench-cow-${t.pid}`);
    const run = async (cow: boolean) => {
      rmSync(dir, { recursive: true, force: true });
      const r = await dump({ pid: t.pid, dir, leaveRunning: true, cow });
      rmSync(dir, { recursive: true, force: true });
      return r.stats;
    };
    const criu = () => {
      rmSync(dir, { recursive: true, force: true });
      const t0 = process.hrtime.bigint();
      const r = spawnSync('criu', ['dump', '-t', String(t.pid), '-D', dir, '--leave-running', '--shell-job'], { stdio: 'ignore' });
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      rmSync(dir, { recursive: true, force: true });
      return r.status === 0 ? ms : NaN;
    };
    // Warm-up: both paths once, so that first-touch costs of this VM stay out.
    await run(false); await run(true);
    const fig = { frozen: { idle: [] as number[], writing: [] as number[] }, cow: { idle: [] as number[], writing: [] as number[] } };
    const total = { frozen: { idle: [] as number[], writing: [] as number[] }, cow: { idle: [] as number[], writing: [] as number[] } };
    const criuMs: number[] = [];
    const perWrite = { base: [] as number[], cow: [] as number[], cowSlow: [] as number[], cowSlowUs: [] as number[], cowMaxUs: [] as number[], frozenMaxUs: [] as number[] };
    const faultUs: number[] = [];
    const armMs: number[] = [];
    const deferred: number[] = [];
    for (let i = 0; i < REPS; i++) {
      for (const mode of ['frozen', 'cow'] as const) {
        await t.ask('idle');
        const s = await run(mode === 'cow');
        fig[mode].idle.push(s.frozenUs / 1000); total[mode].idle.push(s.totalUs / 1000);
      }
      // Writing: the cost per write is what the writer saw during the dump.
      await t.ask('write');
      await new Promise((r) => setTimeout(r, 200));
      perWrite.base.push((await t.stats()).meanNs);
      for (const mode of ['frozen', 'cow'] as const) {
        await t.ask('write');
        const s = await run(mode === 'cow');
        const w = await t.stats();
        fig[mode].writing.push(s.frozenUs / 1000); total[mode].writing.push(s.totalUs / 1000);
        if (mode === 'cow') {
          perWrite.cow.push(w.meanNs); perWrite.cowSlow.push(w.slow); perWrite.cowSlowUs.push(w.slowMeanUs); perWrite.cowMaxUs.push(w.maxUs);
          faultUs.push(s.cow?.faultMeanUs ?? NaN);
          armMs.push((s.cow?.armUs ?? NaN) / 1000);
          deferred.push(s.cow?.faultsDeferred ?? NaN);
        } else {
          perWrite.frozenMaxUs.push(w.maxUs);
        }
      }
      await t.ask('idle');
      if (haveCriu) criuMs.push(criu());
    }
    const m = (xs: number[], d = 1) => +median(xs).toFixed(d);
    console.log(JSON.stringify({
      bench: 'cow', sizeMiB: SIZE_MIB, reps: REPS, outDir: OUT_ROOT,
      frozenMsFrozenCopyIdle: m(fig.frozen.idle), frozenMsCowIdle: m(fig.cow.idle),
      frozenMsFrozenCopyWriting: m(fig.frozen.writing), frozenMsCowWriting: m(fig.cow.writing),
      totalMsFrozenCopyIdle: m(total.frozen.idle), totalMsCowIdle: m(total.cow.idle),
      totalMsFrozenCopyWriting: m(total.frozen.writing), totalMsCowWriting: m(total.cow.writing),
      cowFrozenVsFrozenCopy: +(median(fig.cow.idle) / median(fig.frozen.idle)).toFixed(3),
      cowTotalVsFrozenCopy: +(median(total.cow.idle) / median(total.frozen.idle)).toFixed(2),
      cowFrozenShareOfTotal: +(median(fig.cow.writing) / median(total.cow.writing)).toFixed(3),
      criuMs: haveCriu ? m(criuMs) : null,
      cowFrozenVsCriu: haveCriu ? +(median(fig.cow.idle) / median(criuMs)).toFixed(3) : null,
      writeNsBaseline: m(perWrite.base), writeNsDuringCow: m(perWrite.cow),
      writesFaultedDuringCow: m(perWrite.cowSlow, 0), faultedWriteMeanUs: m(perWrite.cowSlowUs), faultedWriteMaxUs: m(perWrite.cowMaxUs),
      longestWriteFrozenCopyMs: +(median(perWrite.frozenMaxUs) / 1000).toFixed(1),
      faultServiceMeanUs: m(faultUs),
      // Of the cow frozen time, what copy-on-write itself adds (scan, uffd, registration, frozen copy, protection); the rest is the state.
      cowArmMsWriting: m(armMs),
      faultsDeferredWriting: m(deferred, 0),
    }, null, 2));
  } finally {
    t.kill();
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => { console.error(err); process.exit(1); });

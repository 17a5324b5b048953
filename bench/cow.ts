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
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, readdirSync, openSync, writeSync, createReadStream, constants, type ReadStream } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, dirname } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { dump } from '../src/dump/dump.js';
import { setCloexec } from '../src/sys/index.js';

const SIZE_MIB = Number(process.env.BENCH_MIB ?? 1024);
const REPS = Number(process.env.BENCH_REPS ?? 3);
/** Also each copy-on-write dump with its frozen window in the normal class, interleaved. */
const RT_AB = process.env.BENCH_COW_RT_AB === '1' || process.env.BENCH_COW_TARGET_AB === '1' || !!process.env.BENCH_COW_AB_ENV;
/**
 * The knob the second dump sets to 0: TSNAP_COW_WINDOW_RT (BENCH_COW_RT_AB=1), TSNAP_COW_TARGET_RT
 * (BENCH_COW_TARGET_AB=1: only the target's threads in their class), or any BENCH_COW_AB_ENV=NAME.
 */
const AB_ENV = process.env.BENCH_COW_AB_ENV ?? (process.env.BENCH_COW_TARGET_AB === '1' ? 'TSNAP_COW_TARGET_RT' : 'TSNAP_COW_WINDOW_RT');
/** Which target states to dump (idle,writing): idle only keeps a huge-page target's pages as they are (a writer's faults split them). */
const STATES = new Set((process.env.BENCH_COW_STATES ?? 'idle,writing').split(','));
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
  p = mmap(0, n + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  p = (uint64_t *)(((uintptr_t)p + (2 << 20) - 1) & ~(uintptr_t)((2 << 20) - 1));
  madvise(p, n, argc > 2 && !strcmp(argv[2], "huge") ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
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

/**
 * The target, talked to through two FIFOs: CRIU cannot dump a process
 * whose stdio is half of a socket pair (what Node's spawn gives), and
 * pipes it can.
 */
class Target {
  readonly pid: number;
  private readonly lines: Interface;
  private waiting: ((l: string) => void)[] = [];
  private readonly child: ReturnType<typeof spawn>;
  private readonly fds: number[];
  private readonly input: ReadStream;
  constructor(bin: string, args: string[], work: string) {
    const fifos = ['in', 'out'].map((n) => join(work, `${n}-${args.join('-')}`));
    for (const f of fifos) execFileSync('mkfifo', ['-m', '600', f]);
    // O_RDWR: opening a FIFO so does not wait for the other end.
    this.fds = fifos.map((f) => openSync(f, constants.O_RDWR));
    this.child = spawn(bin, args, { stdio: [this.fds[0], this.fds[1], 'inherit'] });
    this.pid = this.child.pid!;
    this.input = createReadStream('', { fd: this.fds[1], autoClose: false });
    this.lines = createInterface({ input: this.input });
    this.lines.on('line', (l) => this.waiting.shift()?.(l));
  }
  next(): Promise<string> { return new Promise((resolve) => this.waiting.push(resolve)); }
  async ask(cmd: string): Promise<string> { const l = this.next(); writeSync(this.fds[0], `${cmd}\n`); return l; }
  async stats(): Promise<{ writes: number; meanNs: number; slow: number; slowMeanUs: number; maxUs: number }> {
    const [, w, s, sl, sln, mx] = (await this.ask('stats')).split(' ').map(Number);
    return { writes: w, meanNs: w ? s / w : 0, slow: sl, slowMeanUs: sl ? sln / sl / 1000 : 0, maxUs: mx / 1000 };
  }
  kill(): void {
    this.child.kill('SIGKILL');
    this.lines.close();
    this.input.destroy();
    // The read stream's pending read (on a libuv thread) ends with a line from us.
    writeSync(this.fds[1], '\n');
  }
}

type Pages = '4k' | 'thp';

async function main(): Promise<void> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-cow-'));
  const bin = join(work, 'cowbench');
  writeFileSync(`${bin}.c`, FIXTURE);
  execFileSync('gcc', ['-O2', '-pthread', '-o', bin, `${bin}.c`]);
  const haveCriu = spawnSync('criu', ['--version']).status === 0;
  const out: Record<string, unknown> = { bench: 'cow', sizeMiB: SIZE_MIB, reps: REPS, outDir: OUT_ROOT, loadAvg: loadavg().map((x) => +x.toFixed(2)) };
  try {
    for (const pages of (process.env.BENCH_COW_PAGES ?? '4k,thp').split(',') as Pages[]) out[pages] = await runCase(bin, pages, haveCriu);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  out.loadAvgAfter = loadavg().map((x) => +x.toFixed(2));
  console.log(JSON.stringify(out, null, 2));
}

/** One target (4 KiB pages, or MADV_HUGEPAGE memory), every figure of it interleaved in one run. */
async function runCase(bin: string, pages: Pages, haveCriu: boolean): Promise<Record<string, unknown>> {
  const t = new Target(bin, [String(SIZE_MIB), pages === 'thp' ? 'huge' : 'small'], dirname(bin));
  try {
    await t.next();
    const dir = join(OUT_ROOT, `tsnap-bench-cow-${t.pid}`);
    // noRt: the same copy-on-write dump with its frozen window left in the normal class (src/dump/frozen-window.ts).
    const run = async (cow: boolean, noRt = false) => {
      rmSync(dir, { recursive: true, force: true });
      if (noRt) process.env[AB_ENV] = '0';
      try {
        const r = await dump({ pid: t.pid, dir, leaveRunning: true, cow });
        return r.stats;
      } finally {
        delete process.env[AB_ENV];
        rmSync(dir, { recursive: true, force: true });
      }
    };
    // Every copy-on-write run, for the worst case (a median hides it) and where its frozen time went.
    const runs: Record<string, unknown>[] = [];
    const note = (mode: string, state: string, s: Awaited<ReturnType<typeof run>>) => {
      const c = s.cow;
      runs.push({ mode: mode === 'normal' && AB_ENV !== 'TSNAP_COW_WINDOW_RT' ? `${AB_ENV}=0` : mode, state, targetRt: c?.targetRt, preStopMs: +((c?.preStopUs ?? NaN) / 1000).toFixed(1), frozenMs: +(s.frozenUs / 1000).toFixed(1), waitMs: +((c?.windowWaitUs ?? NaN) / 1000).toFixed(1),
        guardianWaitMs: +((c?.guardianWaitUs ?? NaN) / 1000).toFixed(1), targetWaitMs: +((c?.targetWaitUs ?? NaN) / 1000).toFixed(1), releaseMs: +((c?.releaseUs ?? NaN) / 1000).toFixed(1),
        reprotected: c?.pagesReprotected, earlyFaults: c?.earlyFaults, load1: +loadavg()[0].toFixed(1) });
    };
    const noRtFig = { idle: [] as number[], writing: [] as number[] };
    const criu = () => {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      const t0 = process.hrtime.bigint();
      const r = spawnSync('criu', ['dump', '-t', String(t.pid), '-D', dir, '--leave-running', '--shell-job', '-o', 'dump.log'], { stdio: 'ignore' });
      if (r.status !== 0) console.error(`criu dump failed: ${readFileSync(join(dir, 'dump.log'), 'utf8').split('\n').filter((l) => l.startsWith('Error')).join('; ')}`);
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
    const preStopMs: number[] = [];
    const prearmMs: number[] = [];
    const reprotected: number[] = [];
    const earlyFaults: number[] = [];
    const stateMs: number[] = [];
    const layoutMs: number[] = [];
    for (let i = 0; i < REPS; i++) {
      if (STATES.has('idle')) for (const mode of ['frozen', 'cow'] as const) {
        await t.ask('idle');
        const s = await run(mode === 'cow');
        fig[mode].idle.push(s.frozenUs / 1000); total[mode].idle.push(s.totalUs / 1000);
        if (mode === 'cow') note('rt', 'idle', s);
      }
      if (RT_AB && STATES.has('idle')) {
        await t.ask('idle');
        const s = await run(true, true);
        noRtFig.idle.push(s.frozenUs / 1000);
        note('normal', 'idle', s);
      }
      // Writing: the cost per write is what the writer saw during the dump.
      if (STATES.has('writing')) {
      await t.ask('write');
      await new Promise((r) => setTimeout(r, 200));
      perWrite.base.push((await t.stats()).meanNs);
      for (const mode of ['frozen', 'cow'] as const) {
        await t.ask('write');
        const s = await run(mode === 'cow');
        const w = await t.stats();
        fig[mode].writing.push(s.frozenUs / 1000); total[mode].writing.push(s.totalUs / 1000);
        if (mode === 'cow') {
          note('rt', 'writing', s);
          perWrite.cow.push(w.meanNs); perWrite.cowSlow.push(w.slow); perWrite.cowSlowUs.push(w.slowMeanUs); perWrite.cowMaxUs.push(w.maxUs);
          faultUs.push(s.cow?.faultMeanUs ?? NaN);
          armMs.push((s.cow?.armUs ?? NaN) / 1000);
          deferred.push(s.cow?.faultsDeferred ?? NaN);
          preStopMs.push((s.cow?.preStopUs ?? NaN) / 1000);
          prearmMs.push((s.cow?.prearmUs ?? NaN) / 1000);
          reprotected.push(s.cow?.pagesReprotected ?? NaN);
          earlyFaults.push(s.cow?.earlyFaults ?? NaN);
          stateMs.push((s.frozenParts?.stateUs ?? NaN) / 1000);
          layoutMs.push((s.frozenParts?.layoutUs ?? NaN) / 1000);
        } else {
          perWrite.frozenMaxUs.push(w.maxUs);
        }
      }
      if (RT_AB) {
        await t.ask('write');
        const s = await run(true, true);
        await t.stats();
        noRtFig.writing.push(s.frozenUs / 1000);
        note('normal', 'writing', s);
      }
      }
      await t.ask('idle');
      if (haveCriu) criuMs.push(criu());
    }
    const m = (xs: number[], d = 1) => +median(xs).toFixed(d);
    return {
      frozenMsFrozenCopyIdle: m(fig.frozen.idle), frozenMsCowIdle: m(fig.cow.idle),
      frozenMsFrozenCopyWriting: m(fig.frozen.writing), frozenMsCowWriting: m(fig.cow.writing),
      totalMsFrozenCopyIdle: m(total.frozen.idle), totalMsCowIdle: m(total.cow.idle),
      totalMsFrozenCopyWriting: m(total.frozen.writing), totalMsCowWriting: m(total.cow.writing),
      cowFrozenVsFrozenCopy: +(median(fig.cow.idle) / median(fig.frozen.idle)).toFixed(3),
      cowTotalVsFrozenCopy: +(median(total.cow.idle) / median(total.frozen.idle)).toFixed(2),
      cowFrozenShareOfTotal: +(median(fig.cow.writing) / median(total.cow.writing)).toFixed(3),
      // CRIU's dump is frozen from start to end: its wall time is its frozen time.
      criuMs: haveCriu ? m(criuMs) : null,
      cowFrozenVsCriu: haveCriu ? +(median(fig.cow.idle) / median(criuMs)).toFixed(3) : null,
      cowTotalVsCriu: haveCriu ? +(median(total.cow.idle) / median(criuMs)).toFixed(2) : null,
      // The stop before the freeze that makes the uffd (not in frozenMs), then the protection while it runs.
      cowPreStopMsWriting: m(preStopMs), cowPrearmMsWriting: m(prearmMs),
      cowEarlyFaultsWriting: m(earlyFaults, 0), cowPagesReprotectedWriting: m(reprotected, 0),
      writeNsBaseline: m(perWrite.base), writeNsDuringCow: m(perWrite.cow),
      writesFaultedDuringCow: m(perWrite.cowSlow, 0), faultedWriteMeanUs: m(perWrite.cowSlowUs), faultedWriteMaxUs: m(perWrite.cowMaxUs),
      longestWriteFrozenCopyMs: +(median(perWrite.frozenMaxUs) / 1000).toFixed(1),
      faultServiceMeanUs: m(faultUs),
      // Of the cow frozen time: the state step, the layout (smaps), and what copy-on-write itself adds (scan, protecting again, frozen copy).
      cowStateMsWriting: m(stateMs), cowLayoutMsWriting: m(layoutMs), cowArmMsWriting: m(armMs),
      faultsDeferredWriting: m(deferred, 0),
      // The worst frozen time of every copy-on-write run, and (BENCH_COW_RT_AB=1) the same dumps with the window in the normal class.
      frozenMsCowMax: +Math.max(...fig.cow.idle, ...fig.cow.writing).toFixed(1),
      ...(RT_AB ? { frozenMsCowNormalClassIdle: m(noRtFig.idle), frozenMsCowNormalClassWriting: m(noRtFig.writing), frozenMsCowNormalClassMax: +Math.max(...noRtFig.idle, ...noRtFig.writing).toFixed(1) } : {}),
      runs,
    };
  } finally {
    t.kill();
  }
}

// A FIFO read may still be pending on a libuv thread: exit without waiting for it.
main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });

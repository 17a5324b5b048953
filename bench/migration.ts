/**
 * Migration benchmark (part of `npm run bench`): downtime of a process
 * that keeps writing, migrated to a receiver in its own pid and network
 * namespaces (test/helpers/other-host.ts: the pid is free there at once,
 * as on a second machine), against stop-and-copy (dump + restore of the
 * same kind of process) measured in the same run.
 *
 * Downtime is measured twice: as tsnap reports it (freeze of the source to
 * the process running on the receiver), and as the process itself sees
 * it: a thread in it ticks every 5 ms and records every gap between two
 * ticks longer than 10 ms (CLOCK_MONOTONIC, the same clock on both sides
 * of this one-machine "migration"); the longest gap over the freeze is the
 * downtime the process lived through. Gaps elsewhere (a throttled source)
 * are reported too.
 *
 *   node dist/bench/migration.js [--sizes 256,1024,4096] [--rates 10,100] [--quick] [--dir /dev/shm]
 *
 * Default: 256 MiB, 1 GiB and 4 GiB, writers at 10 and 100 MB/s, pre-copy
 * (and post-copy when `tsnap migrate --postcopy` exists), each with its
 * baseline. --quick: 64 and 256 MiB. BENCH_MIGRATION_SIZES / _RATES do the
 * same from the environment. A size whose runs need more memory than is
 * available (about 3x the size) is skipped with a note.
 * BENCH_MIGRATION_MODES=pre-copy,post-copy: some of the three modes only.
 * BENCH_MIGRATION_LOG_DIR=D: each migration's timeline in D (its events,
 * the ticker's gaps, and with TSNAP_TRACE=1 both sides' trace lines, all
 * on CLOCK_MONOTONIC). The freeze is placed from the `resumed` event's
 * arrival (minus the downtime it reports): `done` comes after the source's
 * end, for post-copy after every page is in.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { rmSync, writeFileSync, readFileSync, readdirSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { dump } from '../src/dump/dump.js';
import { restore } from '../src/restore/restore.js';
import { setCloexec, kill, ptrace } from '../src/sys/index.js';
import { startOtherHost } from '../test/helpers/other-host.js';
import { migrate } from '../src/migrate/sender.js';
import { buildDirtyWriter, startDirtyWriter, startNamespacedServe } from './streamed-rig.js';
import { benchDir, killOnInterrupt } from './interrupt-cleanup.js';

const here = dirname(fileURLToPath(import.meta.url));
const TSNAP = join(here, '..', '..', 'bin', 'tsnap');

const WORKLOAD = `
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
#include <sys/mman.h>
#define MAX_GAPS 8192
static uint64_t gap_from[MAX_GAPS], gap_to[MAX_GAPS];
static volatile int ngaps;
static volatile sig_atomic_t report;
static void on_usr1(int s) { (void)s; report = 1; }
static uint64_t now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec; }
static void *ticker(void *arg) {
  (void)arg;
  uint64_t last = now_ns();
  for (;;) {
    struct timespec ts = { 0, 5000000 }; nanosleep(&ts, 0);
    uint64_t t = now_ns();
    if (t - last > 10000000ull && ngaps < MAX_GAPS) { gap_from[ngaps] = last; gap_to[ngaps] = t; ngaps++; }
    last = t;
    if (report) {
      report = 0;
      for (int i = 0; i < ngaps; i++) printf("GAP %llu %llu\\n", (unsigned long long)gap_from[i], (unsigned long long)gap_to[i]);
      printf("END %d\\n", ngaps); fflush(stdout);
    }
  }
  return 0;
}
int main(int argc, char **argv) {
  size_t n = (size_t)atol(argv[1]) << 20, pages = n / 4096;
  double rate = atof(argv[2]) * 1e6 / 4096;            /* pages per second */
  uint64_t *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t i = 0; i < n / 8; i++) p[i] = i * 0x9E3779B97F4A7C15ull;
  signal(SIGUSR1, on_usr1);
  pthread_t t; pthread_create(&t, 0, ticker, 0);
  printf("READY\\n"); fflush(stdout);
  uint64_t k = 0; double carry = 0;
  for (;;) {
    struct timespec ts = { 0, 1000000 }; nanosleep(&ts, 0);
    carry += rate / 1000;
    for (; carry >= 1; carry--) { k++; p[((k * 2654435761u) % pages) * 512] = k; }
  }
}`;

interface Options { sizes: number[]; rates: number[]; dir: string; modes: string[] }

function parseArgs(argv: string[]): Options {
  const list = (s: string | undefined, d: number[]) => (s ? s.split(',').map(Number).filter((x) => x > 0) : d);
  const opt = (name: string) => { const i = argv.indexOf(name); return i >= 0 ? argv[i + 1] : undefined; };
  const quick = argv.includes('--quick') || process.env.BENCH_QUICK === '1';
  return {
    sizes: list(opt('--sizes') ?? process.env.BENCH_MIGRATION_SIZES, quick ? [64, 256] : [256, 1024, 4096]),
    rates: list(opt('--rates') ?? process.env.BENCH_MIGRATION_RATES, [10, 100]),
    dir: opt('--dir') ?? process.env.BENCH_DIR ?? '/dev/shm',
    // BENCH_MIGRATION_MODES=post-copy: one column of the matrix (a cell's other runs left out change what it measures: say so beside a figure)
    modes: (process.env.BENCH_MIGRATION_MODES ?? 'stop-and-copy,pre-copy,post-copy').split(','),
  };
}

function memAvailableMiB(): number {
  return Number(/^MemAvailable:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]) / 1024;
}

function hasPostCopy(): boolean {
  try { return execFileSync(process.execPath, [TSNAP, 'migrate', '--help'], { encoding: 'utf8' }).includes('--postcopy'); } catch { return false; }
}

/** The workload, started so that it is not this process's child (libuv would reap a pid's next owner's ptrace stops). */
async function startWorkload(bin: string, mib: number, mbps: number): Promise<{ pid: number; sh: ChildProcess; forget: () => void }> {
  const sh = spawn('sh', ['-c', `exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-; "${bin}" ${mib} ${mbps} & echo PID $!; wait`], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: sh.stdout! });
  const it = lines[Symbol.asyncIterator]();
  const pid = Number(String((await it.next()).value).split(' ')[1]);
  // Interrupted, the bench kills it (and the shell); otherwise the caller's finally does, then forget()s them
  // (a pid left registered could be another process's by the time of an interrupt).
  const forgetPid = killOnInterrupt(pid);
  const forgetSh = killOnInterrupt(sh.pid);
  const ready = await it.next();
  if (String(ready.value) !== 'READY') throw new Error(`workload did not start: ${ready.value}`);
  return { pid, sh, forget: () => { forgetPid(); forgetSh(); } };
}

/** The gaps the workload's ticker recorded, as [from, to] in ms of CLOCK_MONOTONIC, read from its stdout file. */
async function readGaps(signal: () => void, out: string): Promise<[number, number][]> {
  signal();
  for (let i = 0; i < 500; i++) {
    const text = existsSync(out) ? readFileSync(out, 'utf8') : '';
    if (/^END \d+$/m.test(text)) {
      return text.split('\n').filter((l) => l.startsWith('GAP ')).map((l) => { const [, a, b] = l.split(' '); return [Number(BigInt(a) / 1000n) / 1000, Number(BigInt(b) / 1000n) / 1000]; });
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`the workload did not report its gaps in ${out}`);
}

/** The longest gap over the freeze window [from, to] (ms), and the longest one anywhere in [start, to]. */
function gapFigures(gaps: [number, number][], start: number, from: number, to: number): { freezeGapMs: number; maxGapMs: number } {
  let freeze = 0;
  let max = 0;
  for (const [a, b] of gaps) {
    if (b < start) continue;
    max = Math.max(max, b - a);
    if (a <= to && b >= from) freeze = Math.max(freeze, b - a);
  }
  return { freezeGapMs: +freeze.toFixed(1), maxGapMs: +max.toFixed(1) };
}

let runNo = 0;
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

/** Stop-and-copy: dump (frozen, then killed) and restore of the workload, in this process. */
async function baseline(bin: string, mib: number, mbps: number, dir: string): Promise<Record<string, unknown>> {
  const w = await startWorkload(bin, mib, mbps);
  const img = join(dir, 'img');
  const out = join(dir, `baseline-${runNo++}.out`);
  try {
    await new Promise((r) => setTimeout(r, 300));
    const start = nowMs();
    const d = await dump({ pid: w.pid, dir: img, compression: 'none' });
    const r = await restore({ dir: img, newPid: true, stdout: out, stderr: '/dev/null' });
    const end = nowMs();
    const forgetRestored = killOnInterrupt(r.pid);
    const frozenAt = Number(d.frozenAt ?? process.hrtime.bigint()) / 1e6;
    try {
      const gaps = await readGaps(() => kill(r.pid, 10), out);
      return { downtimeMs: +(end - frozenAt).toFixed(1), frozenMs: +(d.stats.frozenUs / 1000).toFixed(1), ...gapFigures(gaps, start, frozenAt, end) };
    } finally {
      kill(r.pid, 9);
      try { ptrace.waitpidBlocking(r.pid); } catch { /* reaped */ }
      forgetRestored();
    }
  } finally {
    try { process.kill(w.pid, 'SIGKILL'); } catch { /* dumped and killed */ }
    w.sh.kill('SIGKILL');
    w.forget();
    rmSync(img, { recursive: true, force: true });
    rmSync(out, { force: true });
  }
}

/** tsnap migrate (the CLI, as a user runs it) to a receiver in its own namespaces. */
async function migration(bin: string, mib: number, mbps: number, dir: string, extra: string[]): Promise<Record<string, unknown>> {
  const out = join(dir, `restored-${runNo++}.out`);
  const oh = await startOtherHost(TSNAP, ['--dir', join(dir, 'in'), '--token', 'bench', '--restore', '--count', '1', '--stdout', out, '--stderr', '/dev/null']);
  // The namespace's first process: killed, the kernel kills the rest of it (the restored process included).
  const forgetOh = killOnInterrupt(oh.proc.pid);
  const w = await startWorkload(bin, mib, mbps);
  try {
    await new Promise((r) => setTimeout(r, 300));
    const start = nowMs();
    const m = spawn(process.execPath, ['--single-threaded-gc', TSNAP, 'migrate', '--pid', String(w.pid), '--to', `${oh.host}:${oh.port}`, '--token', 'bench', '--downtime-ms', '50', '--max-iterations', '10', '--json', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
    // Killed, its guardian puts the source back (which is killed too).
    const forgetMigrate = killOnInterrupt(m.pid);
    let stdout = '';
    let stderr = '';
    m.stdout!.on('data', (d) => { stdout += d; });
    m.stderr!.on('data', (d) => { stderr += d; });
    let doneAt = 0;
    // Post-copy: "done" comes once every page is in, long after the resume;
    // the freeze is placed from the "resumed" event's arrival instead.
    let resumedAt = 0;
    const code = await new Promise<number>((resolve) => {
      m.stdout!.on('data', () => { if (!doneAt && stdout.includes('"event":"done"')) doneAt = nowMs(); });
      m.stderr!.on('data', () => { if (!resumedAt && stderr.includes('"event":"resumed"')) resumedAt = nowMs(); });
      m.once('exit', (c) => resolve(c ?? -1));
    });
    forgetMigrate();
    if (code !== 0) throw new Error(`migrate exited ${code}: ${stderr}`);
    const done = JSON.parse(stdout.trim().split('\n').pop()!);
    if (done.restoreError) throw new Error(done.restoreError);
    const runningAt = resumedAt || doneAt;
    const frozenAt = runningAt - done.downtimeMs;
    const events = stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
    const there = oh.hostPid(done.restoredPid);
    if (!there) throw new Error('the restored process is not in the receiver namespace');
    const gaps = await readGaps(() => process.kill(there, 'SIGUSR1'), out);
    const logDir = process.env.BENCH_MIGRATION_LOG_DIR;
    if (logDir) {
      // The whole timeline of one run: both sides' trace lines (TSNAP_TRACE=1), the events and the ticker's gaps (ms, CLOCK_MONOTONIC).
      mkdirSync(logDir, { recursive: true });
      const tag = `${mib}M-${mbps}-${extra.includes('--postcopy') ? 'post' : 'pre'}-${runNo}`;
      writeFileSync(join(logDir, `${tag}.log`), [`frozenAt ${frozenAt.toFixed(3)} runningAt ${runningAt.toFixed(3)} doneAt ${doneAt.toFixed(3)}`, ...gaps.filter(([, b]) => b >= start).map(([a, b]) => `GAP ${a.toFixed(3)} ${b.toFixed(3)} ${(b - a).toFixed(1)}`), stderr, ...oh.events].join('\n'));
    }
    return {
      downtimeMs: +done.downtimeMs.toFixed(1),
      freezeToCommitMs: +done.freezeToCommitMs.toFixed(1),
      ...gapFigures(gaps, start, frozenAt, runningAt),
      // every gap over 20 ms after the start, as [ms after the freeze, length]: where a stall lies
      gaps: gaps.filter(([a, b]) => b >= start && b - a > 20).map(([a, b]) => [+(a - frozenAt).toFixed(1), +(b - a).toFixed(1)]),
      totalMs: +done.totalMs.toFixed(0),
      iterations: done.iterations,
      bytesSentVsMemory: +(done.bytesSent / (mib * 2 ** 20)).toFixed(3),
      stoppedBecause: done.stoppedBecause,
      convergence: done.convergence ?? null,
      throttleSteps: events.filter((e) => e.event === 'throttle').map((e) => e.throttlePct),
      // pages and ms of each round: how the dirty set shrank (or did not)
      rounds: events.filter((e) => e.event === 'iteration').map((e) => `${e.pages}p/${Math.round(e.ms)}ms`).join(' '),
    };
  } finally {
    try { process.kill(w.pid, 'SIGKILL'); } catch { /* migrated away */ }
    w.sh.kill('SIGKILL');
    w.forget();
    await oh.stop();
    forgetOh();
    rmSync(join(dir, 'in'), { recursive: true, force: true });
    rmSync(out, { force: true });
  }
}

export async function benchMigration(argv: string[] = process.argv.slice(2)): Promise<Record<string, unknown>> {
  const o = parseArgs(argv);
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = benchDir(tmpdir(), 'tsnap-bench-mig-');
  mkdirSync(o.dir, { recursive: true });
  const data = benchDir(o.dir, 'tsnap-bench-mig-');
  const bin = join(work, 'workload');
  writeFileSync(`${bin}.c`, WORKLOAD);
  execFileSync('gcc', ['-O2', '-pthread', '-o', bin, `${bin}.c`]);
  const postCopy = hasPostCopy();
  const result: Record<string, unknown> = {
    sizesMiB: o.sizes, ratesMBps: o.rates, imageDir: o.dir,
    postCopy: postCopy ? 'measured (--postcopy)' : 'skipped: this build of tsnap migrate has no --postcopy',
    runs: [] as unknown[],
  };
  const runs = result.runs as unknown[];
  const log = (r: Record<string, unknown>) => { runs.push(r); process.stderr.write(`${JSON.stringify(r)}\n`); };
  try {
    // Warm-up (not reported): this VM hands freed memory back to its host; first touches are slow.
    const warm = Math.min(256, ...o.sizes);
    await baseline(bin, warm, 10, data);
    await migration(bin, warm, 10, data, []);
    for (const mib of o.sizes) {
      const need = mib * 3 + 1024;
      if (memAvailableMiB() < need) {
        log({ sizeMiB: mib, skipped: `needs about ${need} MiB available, ${memAvailableMiB().toFixed(0)} MiB are` });
        continue;
      }
      for (const mbps of o.rates) {
        const at = { sizeMiB: mib, writerMBps: mbps };
        if (o.modes.includes('stop-and-copy')) log({ ...at, mode: 'stop-and-copy', ...(await baseline(bin, mib, mbps, data)) });
        if (o.modes.includes('pre-copy')) log({ ...at, mode: 'pre-copy', ...(await migration(bin, mib, mbps, data, [])) });
        if (postCopy && o.modes.includes('post-copy')) log({ ...at, mode: 'post-copy', ...(await migration(bin, mib, mbps, data, ['--postcopy'])) });
      }
    }
    return result;
  } finally {
    rmSync(work, { recursive: true, force: true });
    rmSync(data, { recursive: true, force: true });
  }
}

/**
 * The streamed path (wire v2) against restoring after the commit, in the
 * same run: a receiver in its own pid namespace (the pid is free at once,
 * as on another host) that builds the process while rounds arrive, and the
 * same receiver told not to (serve --no-live-build: the chain is restored
 * after the commit). Downtime is freeze to running on the receiver, as
 * tsnap migrate reports it.
 */
export async function benchStreamedMigration(sizeMiB = Number(process.env.BENCH_STREAM_MIB ?? 256), mbps = Number(process.env.BENCH_STREAM_MBPS ?? 10), runs = Number(process.env.BENCH_STREAM_RUNS ?? 2)): Promise<Record<string, unknown>> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = benchDir(tmpdir(), 'tsnap-bench-stream-');
  const bin = buildDirtyWriter(work);
  const tsnapBin = new URL('../../bin/tsnap', import.meta.url).pathname;
  const one = async (live: boolean, port: number) => {
    const { srv, events } = await startNamespacedServe(tsnapBin, port, join(work, `in-${port}`), live ? [] : ['--no-live-build']);
    let child: ChildProcess | null = null;
    try {
      const w = await startDirtyWriter(bin, sizeMiB, mbps);
      child = w.shell;
      const sourcePid = w.pid;
      const r = await migrate({ pid: sourcePid, host: '127.0.0.1', port, token: 'bench', downtimeMs: 50, maxIterations: 10 });
      for (let i = 0; i < 200 && !events.some((e) => e.event === 'restored' || e.event === 'restore-failed'); i++) await new Promise((res) => setTimeout(res, 10));
      const restored = events.find((e) => e.event === 'restored');
      const finalRound = events.find((e) => e.event === 'iteration' && e.name === 'final');
      return { downtimeMs: +r.downtimeMs.toFixed(1), freezeToCommitMs: +r.freezeToCommitMs.toFixed(1), iterations: r.iterations, finalPages: finalRound?.livePagesWritten ?? null, path: restored?.path ?? null, receiverRestoreMs: restored ? +((restored.restoreUs as number) / 1000).toFixed(1) : null, restoreError: r.restoreError };
    } finally {
      child?.kill('SIGKILL');
      srv.kill('SIGKILL'); // the namespace's init: the restored process goes with it
      await new Promise((res) => setTimeout(res, 200));
    }
  };
  const result: Record<string, unknown> = { sizeMiB, dirtyMBps: mbps };
  try {
    let port = 17950 + (process.pid % 40);
    const streamed = [];
    const afterCommit = [];
    // Interleaved, so that both see the same machine.
    // BENCH_STREAM_LIVE_ONLY=1: the streamed path alone (several runs of
    // the frozen window, without the slow restores of the other path).
    const liveOnly = process.env.BENCH_STREAM_LIVE_ONLY === '1';
    for (let i = 0; i < runs; i++) {
      streamed.push(await one(true, port++));
      if (!liveOnly) afterCommit.push(await one(false, port++));
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    result.streamed = streamed;
    result.streamedMedianMs = { downtime: median(streamed.map((x) => x.downtimeMs)), freezeToCommit: median(streamed.map((x) => x.freezeToCommitMs)), receiverRestore: median(streamed.map((x) => x.receiverRestoreMs ?? NaN)) };
    if (liveOnly) return result;
    result.restoreAfterCommit = afterCommit;
    result.downtimeRatio = +(median(streamed.map((x) => x.downtimeMs)) / median(afterCommit.map((x) => x.downtimeMs))).toFixed(3);
    return result;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}` && process.argv[2] === 'streamed') {
  benchStreamedMigration().then((r) => console.log(JSON.stringify(r, null, 2)), (err) => { console.error(err); process.exit(1); });
} else if (import.meta.url === `file://${process.argv[1]}`) {
  benchMigration().then((r) => console.log(JSON.stringify(r, null, 2)), (err) => { console.error(err); process.exit(1); });
}

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
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dump } from '../src/dump/dump.js';
import { restore } from '../src/restore/restore.js';
import { ptrace, kill, setCloexec } from '../src/sys/index.js';
import { findCriu, criuDump, criuRestore, killAndWaitGone, taskCpuMs } from './criu.js';

const MIB = Number(process.env.BENCH_MIB ?? 1024);
const REPS = Number(process.env.BENCH_REPS ?? 5);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';

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
  const started: number[] = [];
  try {
    const a = await start();
    started.push(a.pid!);
    await dump({ pid: a.pid!, dir });
    if (criu) {
      const b = await start();
      started.push(b.pid!);
      criuDump(criu, b.pid!, criuDir);
    }
    const tsnapOnce = async () => {
      const c0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      const r = await restore({ dir, newPid: true });
      const wall = Number(process.hrtime.bigint() - t0) / 1e6;
      const c = process.cpuUsage(c0);
      const task = taskCpuMs(r.pid) ?? 0;
      kill(r.pid, 9);
      try { ptrace.waitpidBlocking(r.pid); } catch { /* reaped */ }
      return { wall, cpu: (c.user + c.system) / 1000 + task };
    };
    const criuOnce = async () => {
      const r = criuRestore(criu!, criuDir);
      const task = taskCpuMs(r.pid) ?? 0;
      await killAndWaitGone(r.pid);
      return { wall: r.ms, cpu: task + r.criuCpuMs };
    };
    await tsnapOnce();
    if (criu) await criuOnce();
    const t: { wall: number; cpu: number }[] = [];
    const c: { wall: number; cpu: number }[] = [];
    for (let i = 0; i < REPS; i++) {
      t.push(await tsnapOnce());
      if (criu) c.push(await criuOnce());
    }
    const tw = median(t.map((x) => x.wall));
    const cw = criu ? median(c.map((x) => x.wall)) : null;
    console.log(`${MIB} MiB restore (load ${loadavg()[0].toFixed(1)}): tsnap ${tw.toFixed(0)} ms (CPU, tsnap + task, ${median(t.map((x) => x.cpu)).toFixed(0)} ms)`
      + (cw !== null ? `, CRIU ${cw.toFixed(0)} ms (CPU, criu + task, ${median(c.map((x) => x.cpu)).toFixed(0)} ms): tsnap / CRIU ${(tw / cw).toFixed(2)}` : '; criu not found: no CRIU figure'));
  } finally {
    for (const pid of started) { try { kill(pid, 9); } catch { /* gone */ } }
    rmSync(dir, { recursive: true, force: true });
    rmSync(criuDir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });

/**
 * `npm run bench` (part) and `node dist/bench/vmas.js`: restore of a
 * process with many VMAs (BENCH_VMAS, 10 000 by default: one page each,
 * protections alternating so none merge, every other page written).
 * Batched address-space setup (one remote step per 2048 calls) against
 * one remote syscall per call (TSNAP_REMOTE_BATCH=0), in the same run,
 * medians of BENCH_REPS (5) after a warm-up of each. The restore time is
 * restore()'s own, process running; CRIU 4.2 took 115 ms for 10 000 VMAs
 * on this machine kind (issue 14). Also the CPU time spent (tsnap's own,
 * plus the new task's, read from /proc before it is killed), which a loaded
 * machine inflates far less than the wall time.
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dump } from '../src/dump/dump.js';
import { restore } from '../src/restore/restore.js';
import { ptrace, kill, setCloexec } from '../src/sys/index.js';

const VMAS = Number(process.env.BENCH_VMAS ?? 10_000);
const REPS = Number(process.env.BENCH_REPS ?? 5);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';

const FIXTURE = `
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
  long n = atol(argv[1]);
  for (int fd = 3; fd < 1024; fd++) close(fd);
  char *p = mmap(0, n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 1;
  for (long i = 0; i < n; i += 2) p[i * 4096] = (char)i;
  for (long i = 1; i < n; i += 2) mprotect(p + i * 4096, 4096, PROT_READ);
  printf("ready\\n");
  fflush(stdout);
  for (;;) pause();
}
`;

const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-vmas-'));
  const bin = join(work, 'vmas');
  writeFileSync(`${bin}.c`, FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, `${bin}.c`]);
  const child = spawn(bin, [String(VMAS)], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve) => createInterface({ input: child.stdout! }).once('line', resolve));
  const dir = join(OUT_ROOT, `tsnap-bench-vmas-${child.pid}`);
  rmSync(dir, { recursive: true, force: true });
  try {
    await dump({ pid: child.pid!, dir });
    await new Promise((resolve) => child.once('exit', resolve));
    const ticks = 100; // USER_HZ
    const once = async (batched: boolean): Promise<{ wall: number; cpu: number; task: number }> => {
      if (batched) delete process.env.TSNAP_REMOTE_BATCH;
      else process.env.TSNAP_REMOTE_BATCH = '0';
      const c0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      const r = await restore({ dir, newPid: true, check: 'off' });
      const wall = ms(t0);
      const c = process.cpuUsage(c0);
      const stat = readFileSync(`/proc/${r.pid}/stat`, 'utf8').split(') ')[1].split(' ');
      const taskMs = (Number(stat[11]) + Number(stat[12])) * 1000 / ticks;
      kill(r.pid, 9);
      try { ptrace.waitpidBlocking(r.pid); } catch { /* reaped */ }
      return { wall, cpu: (c.user + c.system) / 1000 + taskMs, task: taskMs };
    };
    await once(false);
    await once(true);
    const one: { wall: number; cpu: number; task: number }[] = [];
    const batch: { wall: number; cpu: number; task: number }[] = [];
    for (let i = 0; i < REPS; i++) {
      one.push(await once(false));
      batch.push(await once(true));
    }
    const o = median(one.map((x) => x.wall));
    const b = median(batch.map((x) => x.wall));
    const oc = median(one.map((x) => x.cpu));
    const bc = median(batch.map((x) => x.cpu));
    console.log(`${VMAS} VMAs restore: one remote syscall per call ${o.toFixed(1)} ms, batched ${b.toFixed(1)} ms (${(b / o).toFixed(3)}; ${(b / 115).toFixed(2)} x CRIU's 115 ms)`
      + `; CPU (tsnap + task): ${oc.toFixed(0)} ms, batched ${bc.toFixed(0)} ms (${(bc / oc).toFixed(3)}), of which the task's own ${median(one.map((x) => x.task)).toFixed(0)} / ${median(batch.map((x) => x.task)).toFixed(0)} ms`);
  } finally {
    delete process.env.TSNAP_REMOTE_BATCH;
    try { kill(child.pid!, 9); } catch { /* gone */ }
    rmSync(dir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });

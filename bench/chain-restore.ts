/**
 * `npm run bench` (part) and `node dist/bench/chain-restore.js`: restore of
 * a 3-level chain (pre-dump, pre-dump, dump; a fifth of the pages rewritten
 * between levels, scattered) against the restore of one image of the same
 * memory, BENCH_CHAIN_MIB (64) MiB, in the same run: wall time of restore()
 * (medians of BENCH_REPS, 5, after a warm-up of each), the CPU time
 * (tsnap's and the new task's) and the process_vm_writev calls each made.
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dump, preDump } from '../src/dump/dump.js';
import { restore } from '../src/restore/restore.js';
import { untrackPid } from '../src/track/untrack.js';
import { ptrace, kill, setCloexec, VmCopier } from '../src/sys/index.js';
import { taskCpuMs } from './criu.js';

const MIB = Number(process.env.BENCH_CHAIN_MIB ?? 64);
const REPS = Number(process.env.BENCH_REPS ?? 5);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';

const FIXTURE = `
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
  size_t n = (size_t)atol(argv[1]) << 20, pages = n / 4096;
  for (int fd = 3; fd < 1024; fd++) close(fd);
  char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t i = 0; i < pages; i++) memset(p + i * 4096, (int)(i * 7), 4096);
  printf("ready\\n");
  fflush(stdout);
  char line[64];
  for (int round = 1; fgets(line, sizeof line, stdin); round++) {
    for (size_t i = (size_t)round; i < pages; i += 5) p[i * 4096] = (char)(round + i);
    printf("ok\\n");
    fflush(stdout);
  }
  for (;;) pause();
}
`;

const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-chain-'));
  const bin = join(work, 'chain');
  writeFileSync(`${bin}.c`, FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, `${bin}.c`]);
  const child = spawn(bin, [String(MIB)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  const line = () => new Promise((resolve) => lines.once('line', resolve));
  await line();
  const root = mkdtempSync(join(OUT_ROOT, 'tsnap-bench-chain-'));
  const level = (k: number) => join(root, String(k));
  const one = join(root, 'one');
  try {
    await preDump({ pid: child.pid!, dir: level(1) });
    child.stdin!.write('x\n');
    await line();
    await preDump({ pid: child.pid!, dir: level(2), parent: level(1) });
    child.stdin!.write('x\n');
    await line();
    await dump({ pid: child.pid!, dir: level(3), parent: level(2) });
    await new Promise((resolve) => child.once('exit', resolve));
    // The same memory as one image: the chain's restore, dumped again.
    const r0 = await restore({ dir: level(3), newPid: true, check: 'off' });
    await dump({ pid: r0.pid, dir: one });
    try { ptrace.waitpidBlocking(r0.pid); } catch { /* reaped */ }
    const once = async (dir: string): Promise<{ t: number; calls: number; cpu: number }> => {
      const c0 = VmCopier.writeCalls;
      const u0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      const r = await restore({ dir, newPid: true, check: 'off' });
      const t = ms(t0);
      const u = process.cpuUsage(u0);
      const cpu = (u.user + u.system) / 1000 + (taskCpuMs(r.pid) ?? 0);
      kill(r.pid, 9);
      try { ptrace.waitpidBlocking(r.pid); } catch { /* reaped */ }
      return { t, calls: VmCopier.writeCalls - c0, cpu };
    };
    await once(one);
    await once(level(3));
    const a: { t: number; calls: number; cpu: number }[] = [];
    const b: { t: number; calls: number; cpu: number }[] = [];
    for (let i = 0; i < REPS; i++) {
      a.push(await once(one));
      b.push(await once(level(3)));
    }
    const ta = median(a.map((x) => x.t));
    const tb = median(b.map((x) => x.t));
    const ca = median(a.map((x) => x.cpu));
    const cb = median(b.map((x) => x.cpu));
    console.log(`${MIB} MiB restore (load ${loadavg()[0].toFixed(1)}): one image ${ta.toFixed(1)} ms (${a[0].calls} process_vm_writev), 3-level chain ${tb.toFixed(1)} ms (${b[0].calls} process_vm_writev); chain/one ${(tb / ta).toFixed(3)}; CPU (tsnap + task) ${ca.toFixed(0)} / ${cb.toFixed(0)} ms (${(cb / ca).toFixed(3)})`);
  } finally {
    try { kill(child.pid!, 9); } catch { /* gone */ }
    try { untrackPid(child.pid!); } catch { /* not tracked */ }
    rmSync(root, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });

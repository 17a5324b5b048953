/**
 * Post-copy against pre-copy, in the same run (part of `npm run bench`):
 * a process of BENCH_PC_MIB (256) MiB dirtying 10 and 100 MB/s, migrated
 * over loopback to a receiver in its own pid namespace (the pid is free at
 * once, as on another host) that builds it while the rounds arrive.
 * Downtime is freeze to running on the receiver as tsnap migrate reports
 * it; post-copy also reports the freeze to every page in (allInMs).
 * Runs interleave so that both see the same machine; the ratio is
 * post-copy's median downtime over pre-copy's.
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { migrate } from '../src/migrate/sender.js';
import { setCloexec } from '../src/sys/index.js';

const FIXTURE = `
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
  size_t n = (size_t)atol(argv[1]) << 20, pages = n / 4096;
  double rate = atof(argv[2]) * 1e6 / 4096;            /* pages per second */
  uint64_t *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t i = 0; i < n / 8; i++) p[i] = i * 0x9E3779B97F4A7C15ull;
  printf("READY\\n"); fflush(stdout);
  uint64_t k = 0; double carry = 0;
  for (;;) {
    struct timespec ts = { 0, 1000000 }; nanosleep(&ts, 0);
    carry += rate / 1000;
    for (; carry >= 1; carry--) { k++; p[((k * 2654435761u) % pages) * 512] = k; }
  }
}`;

export async function benchPostcopyMigration(sizeMiB = Number(process.env.BENCH_PC_MIB ?? 256), runs = Number(process.env.BENCH_PC_RUNS ?? 1)): Promise<Record<string, unknown>> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-pc-'));
  const src = join(work, 'dirty.c');
  const bin = join(work, 'dirty');
  writeFileSync(src, FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, src]);
  const tsnapBin = new URL('../../bin/tsnap', import.meta.url).pathname;
  let port = 18850 + (process.pid % 40);
  const one = async (mbps: number, postcopy: boolean) => {
    const p = port++;
    const srv = spawn('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', process.execPath, tsnapBin, 'serve', '--listen', `127.0.0.1:${p}`, '--dir', join(work, `in-${p}`), '--token', 'bench', '--restore', '--json', '--stdout', '/dev/null', '--stderr', '/dev/null'], { stdio: ['ignore', 'ignore', 'pipe'] });
    const events: Record<string, unknown>[] = [];
    const listening = new Promise<void>((resolve, reject) => {
      createInterface({ input: srv.stderr! }).on('line', (l) => {
        try { events.push(JSON.parse(l)); } catch { return; }
        if (events.some((e) => e.event === 'listening')) resolve();
      });
      srv.once('exit', () => reject(new Error('serve exited')));
    });
    let child: ReturnType<typeof spawn> | null = null;
    try {
      await listening;
      child = spawn('sh', ['-c', `"${bin}" ${sizeMiB} ${mbps} & echo PID $!; wait`], { stdio: ['ignore', 'pipe', 'inherit'] });
      const lines = createInterface({ input: child.stdout! });
      const sourcePid: number = await new Promise((resolve) => lines.once('line', (l) => resolve(Number(l.split(' ')[1]))));
      await new Promise((resolve) => lines.once('line', resolve));
      const r = await migrate({ pid: sourcePid, host: '127.0.0.1', port: p, token: 'bench', downtimeMs: 50, maxIterations: 10, ...(postcopy ? { postcopy: 'on' as const } : {}) });
      return {
        downtimeMs: +r.downtimeMs.toFixed(1), freezeToCommitMs: +r.freezeToCommitMs.toFixed(1), iterations: r.iterations, stoppedBecause: r.stoppedBecause,
        ...(r.postcopy ? { allInMs: +r.postcopy.allInMs.toFixed(1), postcopyMiB: +(r.postcopy.pages / 256).toFixed(1), pagesRequested: r.postcopy.pagesRequested } : {}),
        restoreError: r.restoreError,
      };
    } finally {
      child?.kill('SIGKILL');
      srv.kill('SIGKILL'); // the namespace's init: the restored process goes with it
      await new Promise((res) => setTimeout(res, 200));
    }
  };
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const result: Record<string, unknown> = { sizeMiB };
  try {
    for (const mbps of [10, 100]) {
      const pre = [];
      const post = [];
      for (let i = 0; i < runs; i++) {
        pre.push(await one(mbps, false));
        post.push(await one(mbps, true));
      }
      result[`dirty${mbps}MBps`] = { precopy: pre, postcopy: post, downtimeRatio: +(median(post.map((x) => x.downtimeMs)) / median(pre.map((x) => x.downtimeMs))).toFixed(3) };
    }
    return result;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  benchPostcopyMigration().then((r) => console.log(JSON.stringify(r, null, 2)), (err) => { console.error(err); process.exit(1); });
}

/**
 * Migration benchmark (part of `npm run bench`): a 1 GiB process dirtying
 * 10 MB/s and 100 MB/s, migrated over loopback to an in-process receiver
 * that restores it. Reports total time, iterations, bytes sent relative to
 * the memory size, and downtime (freeze to running on the receiver, and the
 * part of it until the receiver had committed the image).
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { serve } from '../src/migrate/receiver.js';
import { migrate } from '../src/migrate/sender.js';
import { setCloexec, kill, ptrace } from '../src/sys/index.js';

const SIZE_MIB = Number(process.env.BENCH_MIB ?? 1024);

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

export async function benchMigration(): Promise<Record<string, unknown>> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-mig-'));
  const src = join(work, 'dirty.c');
  const bin = join(work, 'dirty');
  writeFileSync(src, FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, src]);
  const result: Record<string, unknown> = { sizeMiB: SIZE_MIB };
  try {
    for (const mbps of [10, 100]) {
      const s = await serve({ host: '127.0.0.1', port: 0, dir: join(work, `in-${mbps}`), token: 'bench', restore: true, count: 1, stdout: '/dev/null', stderr: '/dev/null' });
      // The source must not be this process's own child: libuv would reap its
      // pid's next owner's ptrace stops (the restored process gets that pid).
      const child = spawn('sh', ['-c', `"${bin}" ${SIZE_MIB} ${mbps} & echo PID $!; wait`], { stdio: ['ignore', 'pipe', 'inherit'] });
      const lines = createInterface({ input: child.stdout! });
      const sourcePid: number = await new Promise((resolve) => lines.once('line', (l) => resolve(Number(l.split(' ')[1]))));
      await new Promise((resolve) => lines.once('line', resolve));
      try {
        const r = await migrate({ pid: sourcePid, host: '127.0.0.1', port: s.port, token: 'bench', downtimeMs: 50, maxIterations: 10 });
        result[`dirty${mbps}MBps`] = {
          totalMs: +r.totalMs.toFixed(0),
          iterations: r.iterations,
          stoppedBecause: r.stoppedBecause,
          bytesSentVsMemory: +(r.bytesSent / (SIZE_MIB << 20)).toFixed(3),
          downtimeMs: +r.downtimeMs.toFixed(1),
          freezeToCommitMs: +r.freezeToCommitMs.toFixed(1),
          restoreError: r.restoreError,
        };
        if (r.restoredPid) {
          kill(r.restoredPid, 9);
          try { ptrace.waitpidBlocking(r.restoredPid); } catch { /* reaped */ }
        }
      } finally {
        try { process.kill(sourcePid, 'SIGKILL'); } catch { /* migrated away */ }
        child.kill('SIGKILL');
        await s.done;
      }
    }
    return result;
  } finally {
    rmSync(work, { recursive: true, force: true });
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
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-stream-'));
  const src = join(work, 'dirty.c');
  const bin = join(work, 'dirty');
  writeFileSync(src, FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, src]);
  const tsnapBin = new URL('../../bin/tsnap', import.meta.url).pathname;
  const one = async (live: boolean, port: number) => {
    const serveArgs = ['--pid', '--fork', '--mount-proc', '--kill-child', process.execPath, tsnapBin, 'serve', '--listen', `127.0.0.1:${port}`, '--dir', join(work, `in-${port}`), '--token', 'bench', '--restore', '--json', '--stdout', '/dev/null', '--stderr', '/dev/null', ...(live ? [] : ['--no-live-build'])];
    const srv = spawn('unshare', serveArgs, { stdio: ['ignore', 'ignore', 'pipe'] });
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
      const r = await migrate({ pid: sourcePid, host: '127.0.0.1', port, token: 'bench', downtimeMs: 50, maxIterations: 10 });
      for (let i = 0; i < 200 && !events.some((e) => e.event === 'restored' || e.event === 'restore-failed'); i++) await new Promise((res) => setTimeout(res, 10));
      const restored = events.find((e) => e.event === 'restored');
      return { downtimeMs: +r.downtimeMs.toFixed(1), freezeToCommitMs: +r.freezeToCommitMs.toFixed(1), iterations: r.iterations, path: restored?.path ?? null, receiverRestoreMs: restored ? +((restored.restoreUs as number) / 1000).toFixed(1) : null, restoreError: r.restoreError };
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
    for (let i = 0; i < runs; i++) {
      streamed.push(await one(true, port++));
      afterCommit.push(await one(false, port++));
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    result.streamed = streamed;
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

/**
 * What bench/migration.ts (streamed) and bench/postcopy.ts share: a writer
 * dirtying SIZE MiB at RATE MB/s (random pages), and `tsnap serve
 * --restore` in a pid namespace of its own (the pid is free at once, as on
 * another host), whose JSON events are collected.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const DIRTY_WRITER_C = `
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

/** Compiles the writer into `work`; returns its path. */
export function buildDirtyWriter(work: string): string {
  const src = join(work, 'dirty.c');
  const bin = join(work, 'dirty');
  writeFileSync(src, DIRTY_WRITER_C);
  execFileSync('gcc', ['-O2', '-o', bin, src]);
  return bin;
}

/** Starts the writer (through sh, so that it is not our child: the migration kills it); resolves with its pid once it is READY. */
export async function startDirtyWriter(bin: string, sizeMiB: number, mbps: number): Promise<{ pid: number; shell: ChildProcess }> {
  const shell = spawn('sh', ['-c', `"${bin}" ${sizeMiB} ${mbps} & echo PID $!; wait`], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: shell.stdout! });
  const pid: number = await new Promise((resolve) => lines.once('line', (l) => resolve(Number(l.split(' ')[1]))));
  await new Promise((resolve) => lines.once('line', resolve));
  return { pid, shell };
}

/** `tsnap serve --restore` in its own pid namespace on `port`; resolves once it listens. TSNAP_TRACE lines go to our stderr. */
export async function startNamespacedServe(tsnapBin: string, port: number, dir: string, extra: string[] = []): Promise<{ srv: ChildProcess; events: Record<string, unknown>[] }> {
  const args = ['--pid', '--fork', '--mount-proc', '--kill-child', process.execPath, tsnapBin, 'serve', '--listen', `127.0.0.1:${port}`, '--dir', dir, '--token', 'bench', '--restore', '--json', '--stdout', '/dev/null', '--stderr', '/dev/null', ...extra];
  const srv = spawn('unshare', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const events: Record<string, unknown>[] = [];
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: srv.stderr! }).on('line', (l) => {
      // TSNAP_TRACE=1: the receiver's timeline goes with the sender's.
      try { events.push(JSON.parse(l)); } catch { if (l.startsWith('tsnap-trace ')) process.stderr.write(`${l}\n`); return; }
      if (events.some((e) => e.event === 'listening')) resolve();
    });
    srv.once('exit', () => reject(new Error('serve exited')));
  });
  return { srv, events };
}

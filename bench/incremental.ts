/**
 * Incremental dump benchmark (part of `npm run bench`): a 1 GiB process
 * writing 1%, 10% and 50% of its pages between rounds. All figures are
 * ratios against a full dump of the same process in the same run.
 */
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dump, preDump } from '../src/dump/dump.js';
import { untrackPid } from '../src/track/untrack.js';
import { Pagemap, PAGE_IS, setCloexec } from '../src/sys/index.js';

const SIZE_MIB = Number(process.env.BENCH_MIB ?? 1024);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';

const FIXTURE = `
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
  size_t n = (size_t)atol(argv[1]) << 20, pages = n / 4096;
  uint64_t *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t i = 0; i < n / 8; i++) p[i] = i * 0x9E3779B97F4A7C15ull;
  printf("READY %p\\n", (void *)p); fflush(stdout);
  char line[64]; unsigned round = 0;
  while (fgets(line, sizeof line, stdin)) {
    if (!strncmp(line, "dirty", 5)) {           /* dirty PERCENT: spread over the region */
      double pct = atof(line + 6); size_t step = (size_t)(100.0 / pct); round++;
      for (size_t i = round % step; i < pages; i += step) p[i * 512] = round;
      printf("DONE\\n");
    } else if (!strncmp(line, "touch", 5)) {    /* one write per page, timed */
      double t = now();
      for (size_t i = 0; i < pages; i++) p[i * 512 + 1]++;
      printf("NS %f\\n", (now() - t) * 1e9 / pages);
    }
    fflush(stdout);
  }
  return 0;
}`;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

export async function benchIncremental(): Promise<Record<string, unknown>> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-inc-'));
  const src = join(work, 'dirty.c');
  const bin = join(work, 'dirty');
  writeFileSync(src, FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, src]);
  const child = spawn(bin, [String(SIZE_MIB)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const pid = child.pid!;
  const lines: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => { const w = waiters.shift(); if (w) w(l); else lines.push(l); });
  const next = () => new Promise<string>((resolve) => { const l = lines.shift(); if (l !== undefined) resolve(l); else waiters.push(resolve); });
  const ask = async (cmd: string) => { child.stdin!.write(`${cmd}\n`); return next(); };
  const out = join(OUT_ROOT, `tsnap-bench-inc-${pid}`);
  const fresh = (name: string) => { const d = join(out, name); rmSync(d, { recursive: true, force: true }); return d; };
  try {
    const addr = Number(BigInt((await next()).split(' ')[1]));
    const bytes = SIZE_MIB << 20;
    // Baseline: a full dump of the same process, twice (warm-up, then measured).
    await dump({ pid, dir: fresh('full'), leaveRunning: true });
    const full = await dump({ pid, dir: fresh('full'), leaveRunning: true });
    const result: Record<string, unknown> = { sizeMiB: SIZE_MIB, fullDumpMs: +(full.stats.totalUs / 1000).toFixed(1), fullFrozenMs: +(full.stats.frozenUs / 1000).toFixed(1) };

    // The target's cost of tracking: one write per page, untracked vs. just armed.
    const untracked = Number((await ask('touch')).split(' ')[1]);
    await preDump({ pid, dir: fresh('arm') });
    const armed = Number((await ask('touch')).split(' ')[1]);
    result.firstWriteNsUntracked = +untracked.toFixed(0);
    result.firstWriteNsArmed = +armed.toFixed(0);
    result.firstWriteSlowdown = +(armed / untracked).toFixed(2);
    untrackPid(pid);

    // PAGEMAP_SCAN cost per GiB of tracked memory (nothing dirty: the walk itself).
    await preDump({ pid, dir: fresh('scan') });
    const pm = new Pagemap(pid);
    const scans: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t = process.hrtime.bigint();
      [...pm.scan({ start: addr, end: addr + bytes, categoryMask: PAGE_IS.WRITTEN, categoryAnyof: PAGE_IS.PRESENT | PAGE_IS.SWAPPED, returnMask: PAGE_IS.WRITTEN })];
      scans.push(Number(process.hrtime.bigint() - t) / 1e6 / (bytes / 2 ** 30));
    }
    pm.close();
    result.scanMsPerGiB = +median(scans).toFixed(2);
    untrackPid(pid);

    for (const pct of [1, 10, 50]) {
      const base = fresh(`chain-${pct}`);
      await preDump({ pid, dir: join(base, '1') });
      const rounds = [];
      for (let k = 2; k <= 4; k++) {
        await ask(`dirty ${pct}`);
        rounds.push(await preDump({ pid, dir: join(base, String(k)), parent: join(base, String(k - 1)) }));
      }
      await ask(`dirty ${pct}`);
      const final = await dump({ pid, dir: join(base, '5'), parent: join(base, '4'), leaveRunning: true });
      const dirtyBytes = Math.floor(bytes / 4096 / Math.floor(100 / pct)) * 4096;
      const last = rounds[rounds.length - 1];
      result[`dirty${pct}pct`] = {
        preDumpMs: +(last.stats.totalUs / 1000).toFixed(1),
        preDumpVsFullDump: +(last.stats.totalUs / full.stats.totalUs).toFixed(3),
        deltaBytes: last.stats.bytesStored,
        dirtyBytes,
        deltaVsDirty: +(last.stats.bytesStored / dirtyBytes).toFixed(3),
        finalFrozenMs: +(final.stats.frozenUs / 1000).toFixed(1),
        finalFrozenVsFullFrozen: +(final.stats.frozenUs / full.stats.frozenUs).toFixed(3),
      };
      rmSync(base, { recursive: true, force: true });
    }
    return result;
  } finally {
    child.kill('SIGKILL');
    untrackPid(pid);
    rmSync(out, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  benchIncremental().then((r) => console.log(JSON.stringify(r, null, 2)), (err) => { console.error(err); process.exit(1); });
}

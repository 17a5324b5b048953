/**
 * Small processes: the wall time of `tsnap dump` of a 1 MiB process, where
 * the CLI's own start dominates. Measured in the same run, interleaved:
 *   node -e 0        the floor: any Node CLI pays it
 *   tsnap --version  the CLI's start (commander, the command table)
 *   tsnap dump       --leave-running of a 1 MiB process, wall, from spawn to exit
 *   criu dump        the same, when `criu` (or $TSNAP_CRIU) runs here
 * Reported as medians and as ratios to the floor and to CRIU.
 * Standalone: node dist/bench/startup.js (BENCH_STARTUP_REPS, default 15).
 */
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { setCloexec } from '../src/sys/index.js';

const TSNAP = fileURLToPath(new URL('../../bin/tsnap', import.meta.url));
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';

const FIXTURE = `
#include <stdio.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>
#include <fcntl.h>
int main(void) {
  size_t n = 1 << 20;
  uint64_t *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t i = 0; i < n / 8; i++) p[i] = i * 0x9E3779B97F4A7C15ull;
  printf("READY\\n"); fflush(stdout);
  // criu refuses a pipe or socket to the outside: stdio becomes /dev/null, the inherited fds go.
  int null = open("/dev/null", O_RDWR);
  dup2(null, 0); dup2(null, 1); dup2(null, 2);
  for (int fd = 3; fd < 1024; fd++) close(fd);
  for (;;) pause();
}`;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Wall ms of one run; throws with its stderr if it fails. */
function wall(cmd: string, args: string[]): number {
  const t = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return ms;
}

function findCriu(): string | null {
  for (const c of [process.env.TSNAP_CRIU, 'criu'].filter((x): x is string => !!x)) {
    if (spawnSync(c, ['check'], { stdio: 'ignore' }).status === 0) return c;
  }
  return null;
}

export interface StartupFigures {
  reps: number;
  nodeFloorMs: number;
  versionMs: number;
  dump1MiBMs: number;
  criuDump1MiBMs: number | null;
  dumpVsNodeFloor: number;
  versionVsNodeFloor: number;
  dumpVsCriu: number | null;
}

export async function startupFigures(reps = Number(process.env.BENCH_STARTUP_REPS ?? 15)): Promise<StartupFigures> {
  // The bench's inherited fds (from whatever shell started it) must not leak into the target.
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-startup-'));
  const bin = join(work, 'small');
  writeFileSync(`${bin}.c`, FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, `${bin}.c`]);
  const child = spawn(bin, [], { stdio: ['ignore', 'pipe', 'inherit'] });
  const pid = child.pid!;
  const dir = join(OUT_ROOT, `tsnap-bench-small-${pid}`);
  const criu = findCriu();
  try {
    await new Promise((resolve) => createInterface({ input: child.stdout! }).once('line', resolve));
    const floor: number[] = []; const version: number[] = []; const dumps: number[] = []; const criuDumps: number[] = [];
    const tsnapDump = () => { rmSync(dir, { recursive: true, force: true }); return wall(process.execPath, [TSNAP, 'dump', '--pid', String(pid), '--dir', dir, '--leave-running']); };
    // criu wants its image directory to exist.
    const criuDump = () => { rmSync(dir, { recursive: true, force: true }); mkdirSync(dir, { mode: 0o700 }); return wall(criu!, ['dump', '-t', String(pid), '-D', dir, '--leave-running', '--shell-job']); };
    // Warm-up: page cache of node, the modules and the binary.
    wall(process.execPath, ['-e', '0']); tsnapDump(); if (criu) criuDump();
    for (let i = 0; i < reps; i++) {
      floor.push(wall(process.execPath, ['-e', '0']));
      version.push(wall(process.execPath, [TSNAP, '--version']));
      dumps.push(tsnapDump());
      if (criu) criuDumps.push(criuDump());
    }
    const f = median(floor); const d = median(dumps); const c = criu ? median(criuDumps) : null;
    return {
      reps, nodeFloorMs: +f.toFixed(1), versionMs: +median(version).toFixed(1), dump1MiBMs: +d.toFixed(1), criuDump1MiBMs: c === null ? null : +c.toFixed(1),
      dumpVsNodeFloor: +(d / f).toFixed(2), versionVsNodeFloor: +(median(version) / f).toFixed(2), dumpVsCriu: c === null ? null : +(d / c).toFixed(2),
    };
  } finally {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  startupFigures().then((r) => console.log(JSON.stringify(r, null, 2)), (err) => { console.error(err); process.exit(1); });
}

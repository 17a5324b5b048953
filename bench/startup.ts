/**
 * Small processes: the wall time of `tsnap dump` of a 1 MiB process, where
 * the CLI's own start dominates. Measured in the same run, interleaved:
 *   node -e 0        the floor: any Node CLI pays it
 *   tsnap --version  the CLI's start (commander, the command table)
 *   tsnap dump       --leave-running of a 1 MiB process, wall, from spawn to exit
 *                    (`node bin/tsnap dump`, as the tests run it)
 *   command          the same dump with bin/tsnap run as a command, as a user
 *                    runs it: its /bin/sh line starts Node without
 *                    NODE_EXTRA_CA_CERTS (set here, it costs Node ~60-100 ms
 *                    of CPU at each start); then also `node -e 0` without it
 *   criu dump        the same, when `criu` (or $TSNAP_CRIU) runs here
 *   baseline         with BENCH_STARTUP_BASELINE=<another checkout's bin/tsnap>
 *                    (built, its own dist/cli-cache): its `node bin/tsnap dump`
 *                    and its command, interleaved with the others, to compare
 *                    two builds in one run
 * Reported as medians and as ratios to the floor and to CRIU: wall, CPU
 * (user + system, RUSAGE_CHILDREN: on a loaded machine the wall follows
 * the CPU others leave, the CPU less so) and the peak RSS (VmHWM) of each
 * node process (read as it exits by a preload: `-r` is a Node option, not
 * a V8 flag, so every code cache still applies).
 * Standalone: node dist/bench/startup.js (BENCH_STARTUP_REPS, default 15).
 */
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, readdirSync, readFileSync, existsSync } from 'node:fs';
import koffi from 'koffi';
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

const getrusage = koffi.load('libc.so.6').func('int getrusage(int who, void *usage)') as (who: number, buf: Buffer) => number;

/** CPU ms (user + system) of every child reaped so far. */
function childrenCpuMs(): number {
  const ru = Buffer.alloc(144);
  getrusage(-1, ru);
  const tv = (o: number) => Number(ru.readBigInt64LE(o)) * 1e3 + Number(ru.readBigInt64LE(o + 8)) / 1e3;
  return tv(0) + tv(16);
}

const PROBE = `process.on('exit', () => {
  const m = /VmHWM:\\s+(\\d+)/.exec(require('fs').readFileSync('/proc/self/status', 'utf8'));
  require('fs').writeFileSync(process.env.TSNAP_HWM_OUT, m ? m[1] : '0');
});`;

interface Run { ms: number; cpuMs: number; hwmMiB: number }

/** One run: wall and CPU ms, and (for node, with `probe`) its peak RSS; throws with its stderr if it fails. */
function run(cmd: string, args: string[], probe: { file: string; out: string } | null, env: NodeJS.ProcessEnv = process.env, viaOptions = false): Run {
  if (probe) rmSync(probe.out, { force: true });
  const c0 = childrenCpuMs();
  const t = process.hrtime.bigint();
  // A command's node gets the probe through NODE_OPTIONS (a Node option, not a V8 flag: the code caches still apply).
  const argv = probe && !viaOptions ? ['-r', probe.file, ...args] : args;
  const penv = probe ? { ...env, TSNAP_HWM_OUT: probe.out, ...(viaOptions ? { NODE_OPTIONS: `--require ${probe.file}` } : {}) } : env;
  const r = spawnSync(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe'], env: penv });
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  const hwmMiB = probe && existsSync(probe.out) ? Number(readFileSync(probe.out, 'utf8')) / 1024 : NaN;
  return { ms, cpuMs: childrenCpuMs() - c0, hwmMiB };
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
  /** Whether NODE_EXTRA_CA_CERTS was set for this run (then the clean floor is measured too). */
  extraCaCerts: boolean;
  /** `node -e 0` without NODE_EXTRA_CA_CERTS (the same as nodeFloorMs when it is not set). */
  nodeFloorCleanMs: number;
  /** The dump with bin/tsnap run as a command (its launcher drops NODE_EXTRA_CA_CERTS). */
  commandMs: number;
  commandVsCriu: number | null;
  commandVsNodeFloorClean: number;
  /** CPU (user + system) medians, ms. */
  cpu: { nodeFloor: number; nodeFloorClean: number; version: number; dump1MiB: number; command: number; criuDump1MiB: number | null; dumpVsCriu: number | null; commandVsCriu: number | null };
  /** Peak RSS (VmHWM) medians, MiB; the tool's own is over `node -e 0`'s. */
  hwmMiB: { nodeFloor: number; version: number; dump1MiB: number; dumpOverNode: number; command: number };
  /** The same dump by BENCH_STARTUP_BASELINE's bin/tsnap, when set: wall / CPU ms and peak RSS MiB, `node bin/tsnap` and as a command. */
  /** /proc/loadavg at the end of the run. */
  load: string;
  baseline?: { tsnap: string; dump1MiB: Run; command: Run; commandVsCriu: number | null; commandCpuVsCriu: number | null };
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
  const probe = { file: join(work, 'hwm.cjs'), out: join(work, 'hwm') };
  writeFileSync(probe.file, PROBE);
  try {
    await new Promise((resolve) => createInterface({ input: child.stdout! }).once('line', resolve));
    const floor: Run[] = []; const floorClean: Run[] = []; const version: Run[] = []; const dumps: Run[] = []; const commands: Run[] = []; const criuDumps: Run[] = [];
    const baseTsnap = process.env.BENCH_STARTUP_BASELINE; const baseDumps: Run[] = []; const baseCommands: Run[] = [];
    const extraCa = process.env.NODE_EXTRA_CA_CERTS !== undefined;
    const cleanEnv = { ...process.env };
    delete cleanEnv.NODE_EXTRA_CA_CERTS;
    const dumpArgs = ['dump', '--pid', String(pid), '--dir', dir, '--leave-running'];
    const tsnapDump = () => { rmSync(dir, { recursive: true, force: true }); return run(process.execPath, [TSNAP, ...dumpArgs], probe); };
    const tsnapCommand = () => { rmSync(dir, { recursive: true, force: true }); return run(TSNAP, dumpArgs, probe, process.env, true); };
    const baseDump = () => { rmSync(dir, { recursive: true, force: true }); return run(process.execPath, [baseTsnap!, ...dumpArgs], probe); };
    const baseCommand = () => { rmSync(dir, { recursive: true, force: true }); return run(baseTsnap!, dumpArgs, probe, process.env, true); };
    // criu wants its image directory to exist.
    const criuDump = () => { rmSync(dir, { recursive: true, force: true }); mkdirSync(dir, { mode: 0o700 }); return run(criu!, ['dump', '-t', String(pid), '-D', dir, '--leave-running', '--shell-job'], null); };
    // Warm-up: page cache of node, the modules and the binary.
    run(process.execPath, ['-e', '0'], probe); tsnapDump(); tsnapCommand(); if (criu) criuDump();
    if (baseTsnap) { baseDump(); baseCommand(); }
    for (let i = 0; i < reps; i++) {
      floor.push(run(process.execPath, ['-e', '0'], probe));
      if (extraCa) floorClean.push(run(process.execPath, ['-e', '0'], probe, cleanEnv));
      version.push(run(process.execPath, [TSNAP, '--version'], probe));
      dumps.push(tsnapDump());
      commands.push(tsnapCommand());
      if (baseTsnap) { baseDumps.push(baseDump()); baseCommands.push(baseCommand()); }
      if (criu) criuDumps.push(criuDump());
    }
    const m = (rs: Run[], k: keyof Run) => +median(rs.map((r) => r[k])).toFixed(1);
    const f = m(floor, 'ms'); const d = m(dumps, 'ms'); const c = criu ? m(criuDumps, 'ms') : null;
    const cd = m(dumps, 'cpuMs'); const cc = criu ? m(criuDumps, 'cpuMs') : null;
    const fc = extraCa ? m(floorClean, 'ms') : f; const k = m(commands, 'ms'); const kc = m(commands, 'cpuMs');
    return {
      reps, nodeFloorMs: f, versionMs: m(version, 'ms'), dump1MiBMs: d, criuDump1MiBMs: c,
      dumpVsNodeFloor: +(d / f).toFixed(2), versionVsNodeFloor: +(m(version, 'ms') / f).toFixed(2), dumpVsCriu: c === null ? null : +(d / c).toFixed(2),
      extraCaCerts: extraCa, nodeFloorCleanMs: fc, commandMs: k, commandVsCriu: c === null ? null : +(k / c).toFixed(2), commandVsNodeFloorClean: +(k / fc).toFixed(2),
      cpu: {
        nodeFloor: m(floor, 'cpuMs'), nodeFloorClean: extraCa ? m(floorClean, 'cpuMs') : m(floor, 'cpuMs'), version: m(version, 'cpuMs'), dump1MiB: cd, command: kc, criuDump1MiB: cc,
        dumpVsCriu: cc === null ? null : +(cd / cc).toFixed(2), commandVsCriu: cc === null ? null : +(kc / cc).toFixed(2),
      },
      hwmMiB: { nodeFloor: m(floor, 'hwmMiB'), version: m(version, 'hwmMiB'), dump1MiB: m(dumps, 'hwmMiB'), dumpOverNode: +(m(dumps, 'hwmMiB') - m(floor, 'hwmMiB')).toFixed(1), command: m(commands, 'hwmMiB') },
      load: readFileSync('/proc/loadavg', 'utf8').trim(),
      ...(baseTsnap ? { baseline: {
        tsnap: baseTsnap,
        dump1MiB: { ms: m(baseDumps, 'ms'), cpuMs: m(baseDumps, 'cpuMs'), hwmMiB: m(baseDumps, 'hwmMiB') },
        command: { ms: m(baseCommands, 'ms'), cpuMs: m(baseCommands, 'cpuMs'), hwmMiB: m(baseCommands, 'hwmMiB') },
        commandVsCriu: c === null ? null : +(m(baseCommands, 'ms') / c).toFixed(2), commandCpuVsCriu: cc === null ? null : +(m(baseCommands, 'cpuMs') / cc).toFixed(2),
      } } : {}),
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

/**
 * Where the peak RSS of a 1 GiB dump goes: `tsnap dump --leave-running
 * --no-cow` through the CLI (`node bin/tsnap`), none and lz4, with the
 * compile cache and without it (TSNAP_NO_COMPILE_CACHE=1), against `node -e
 * 0`, interleaved. A preloaded probe reads, as the process exits (its RSS
 * only grows, so that is its peak), VmHWM and what makes it up: the node
 * binary's resident text, anonymous mappings (V8's heap pages, large
 * buffers, thread stacks), the brk heap (malloc), other files (koffi, libc);
 * and V8's heap spaces (size / resident / used) and its external memory.
 * BENCH_RSS_BASELINE=<another checkout's bin/tsnap> adds the same dumps by
 * that build (its own dist/cli-cache), to compare two builds in one run;
 * BENCH_RSS_NO_OPT=1 adds a dump with TurboFan off from the start
 * (v8.setFlagsFromString('--no-opt') in a preload: what the optimising
 * compiler's code adds to the binary's resident text).
 * BENCH_RSS_MODE=cow: the copy-on-write dump instead (`dump --leave-running`,
 * the default for 1 GiB: its fault server's thread too), none and lz4, with
 * the baseline's when set; =both: the frozen and the copy-on-write cases.
 * Also the CPU time of each (process.cpuUsage() in the exit handler).
 * Medians of BENCH_REPS (default 3) after a warm-up.
 * Standalone: node dist/bench/rss.js
 */
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { setCloexec } from '../src/sys/index.js';

const TSNAP = fileURLToPath(new URL('../../bin/tsnap', import.meta.url));
const SIZE_MIB = Number(process.env.BENCH_MIB ?? 1024);
const REPS = Number(process.env.BENCH_REPS ?? 3);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';
const BASELINE = process.env.BENCH_RSS_BASELINE;
const MODE = process.env.BENCH_RSS_MODE ?? 'frozen';

const FIXTURE = `
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) {
  size_t n = (size_t)atol(argv[1]) << 20;
  uint64_t *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t i = 0; i < n / 8; i++) p[i] = (i % 512 < 256) ? i * 0x9E3779B97F4A7C15ull : (i & 0xff);
  printf("READY\\n"); fflush(stdout);
  int null = open("/dev/null", O_RDWR); dup2(null, 1); dup2(null, 2); close(null);
  for (;;) pause();
}`;

// KiB figures of the exiting process, as JSON to $TSNAP_RSS_OUT.
const PROBE = `process.on('exit', () => {
  const fs = require('fs');
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const field = (k) => Number(new RegExp(k + ':\\\\s+(\\\\d+)').exec(status)?.[1] ?? 0);
  const parts = { bin: 0, anon: 0, brk: 0, files: 0 };
  let part = null;
  for (const line of fs.readFileSync('/proc/self/smaps', 'utf8').split('\\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ \\S+ \\S+ \\S+ \\d+\\s*(.*)$/.exec(line);
    if (head) { const n = head[1]; part = n === process.execPath ? 'bin' : n === '[heap]' ? 'brk' : n === '' ? 'anon' : n.startsWith('/') ? 'files' : null; continue; }
    const rss = /^Rss:\\s+(\\d+)/.exec(line);
    if (rss && part) parts[part] += Number(rss[1]);
  }
  const spaces = {};
  for (const s of require('v8').getHeapSpaceStatistics()) spaces[s.space_name.replace('_space', '')] = [s.space_size, s.physical_space_size, s.space_used_size].map((b) => Math.round(b / 1024));
  const mem = process.memoryUsage();
  const cpu = process.cpuUsage();
  fs.writeFileSync(process.env.TSNAP_RSS_OUT, JSON.stringify({ hwm: field('VmHWM'), ...parts, external: Math.round(mem.external / 1024), spaces, cpuMs: Math.round((cpu.user + cpu.system) / 1000) }));
});`;
const NO_OPT = `require('v8').setFlagsFromString('--no-opt');`;

interface Sample { hwm: number; bin: number; anon: number; brk: number; files: number; external: number; spaces: Record<string, number[]>; cpuMs: number }

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

async function main(): Promise<void> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-rss-'));
  const bin = join(work, 'fill');
  writeFileSync(`${bin}.c`, FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, `${bin}.c`]);
  const probe = join(work, 'probe.cjs');
  writeFileSync(probe, PROBE);
  const noOpt = join(work, 'no-opt.cjs');
  writeFileSync(noOpt, NO_OPT);
  const out = join(work, 'out.json');
  const dir = join(OUT_ROOT, `tsnap-bench-rss-${process.pid}`);
  const child = spawn(bin, [String(SIZE_MIB)], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise((resolve) => createInterface({ input: child.stdout! }).once('line', resolve));
    const pid = child.pid!;
    const nodeRun = (args: string[], env: Record<string, string> = {}, pre: string[] = []): Sample => {
      rmSync(out, { force: true });
      rmSync(dir, { recursive: true, force: true });
      const r = spawnSync(process.execPath, [...pre, '-r', probe, ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env, TSNAP_RSS_OUT: out } });
      rmSync(dir, { recursive: true, force: true });
      if (r.status !== 0) throw new Error(`node ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
      return JSON.parse(readFileSync(out, 'utf8')) as Sample;
    };
    const dump = (tsnap: string, compress: string, env: Record<string, string> = {}, pre: string[] = [], cow = false) => () =>
      nodeRun([tsnap, 'dump', '--pid', String(pid), '--dir', dir, '--compress', compress, '--leave-running', ...(cow ? [] : ['--no-cow'])], env, pre);
    const frozen: [string, () => Sample][] = [
      ['none', dump(TSNAP, 'none')],
      ['lz4', dump(TSNAP, 'lz4')],
      ['noneNoCache', dump(TSNAP, 'none', { TSNAP_NO_COMPILE_CACHE: '1' })],
      ['lz4NoCache', dump(TSNAP, 'lz4', { TSNAP_NO_COMPILE_CACHE: '1' })],
      ...(BASELINE ? [['noneBase', dump(BASELINE, 'none')], ['lz4Base', dump(BASELINE, 'lz4')], ['noneBaseNoCache', dump(BASELINE, 'none', { TSNAP_NO_COMPILE_CACHE: '1' })]] as [string, () => Sample][] : []),
      ...(process.env.BENCH_RSS_NO_OPT === '1' ? [['noneNoOpt', dump(TSNAP, 'none', {}, ['-r', noOpt])]] as [string, () => Sample][] : []),
    ];
    const cow: [string, () => Sample][] = [
      ['cowNone', dump(TSNAP, 'none', {}, [], true)],
      ['cowLz4', dump(TSNAP, 'lz4', {}, [], true)],
      ...(BASELINE ? [['cowNoneBase', dump(BASELINE, 'none', {}, [], true)], ['cowLz4Base', dump(BASELINE, 'lz4', {}, [], true)]] as [string, () => Sample][] : []),
    ];
    const cases: [string, () => Sample][] = [
      ['nodeFloor', () => nodeRun(['-e', '0'])],
      ...(MODE === 'cow' ? [] : frozen),
      ...(MODE === 'cow' || MODE === 'both' ? cow : []),
    ];
    for (const [, f] of cases) f();
    const runs: Record<string, Sample[]> = {};
    for (let i = 0; i < REPS; i++) for (const [k, f] of cases) (runs[k] ??= []).push(f());
    const mib = (kib: number) => +(kib / 1024).toFixed(1);
    const m = (k: string, f: (s: Sample) => number) => median(runs[k].map(f));
    const floor = m('nodeFloor', (s) => s.hwm);
    const report = {
      sizeMiB: SIZE_MIB, reps: REPS, mode: MODE, load: readFileSync('/proc/loadavg', 'utf8').trim(), nodeFloorMiB: mib(floor),
      peakOverNodeMiB: Object.fromEntries(cases.slice(1).map(([k]) => [k, mib(m(k, (s) => s.hwm) - floor)])),
      // CPU (user + system, every thread) of each process up to its exit handler.
      cpuMs: Object.fromEntries(cases.map(([k]) => [k, m(k, (s) => s.cpuMs)])),
      allRunsOverNodeMiB: Object.fromEntries(cases.slice(1).map(([k]) => [k, runs[k].map((s) => mib(s.hwm - floor))])),
      // Resident MiB at exit: the node binary's text, anonymous mappings, brk heap, other files.
      parts: Object.fromEntries(cases.map(([k]) => [k, { bin: mib(m(k, (s) => s.bin)), anon: mib(m(k, (s) => s.anon)), brk: mib(m(k, (s) => s.brk)), files: mib(m(k, (s) => s.files)), external: mib(m(k, (s) => s.external)) }])),
      // V8 heap spaces, MiB: size / resident / used.
      v8Spaces: Object.fromEntries(cases.map(([k]) => [k, Object.fromEntries(Object.keys(runs[k][0].spaces).filter((sp) => runs[k][0].spaces[sp][0] > 0)
        .map((sp) => [sp, [0, 1, 2].map((j) => mib(m(k, (s) => s.spaces[sp][j]))).join(' / ')]))])),
    };
    console.log(JSON.stringify(report, null, 2));
  } finally {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => { console.error(err); process.exit(1); });

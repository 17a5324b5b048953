/**
 * The dump at the floor: `tsnap dump` of a 1 GiB process through the CLI,
 * side by side with CRIU and the physical floors, interleaved in one run:
 *   raw-readv    process_vm_readv of the memory into one reused 1 MiB buffer
 *   readv+write  the same plus a write of each MiB to a new file in the
 *                image's filesystem (what a dump that copies twice costs)
 *   tsnap none / lz4   `tsnap dump --leave-running` (copy-on-write, the
 *                default) and `--no-cow` (frozen for the whole copy): wall
 *                from spawn to exit, CPU (user + system of every thread,
 *                from RUSAGE_CHILDREN), and the CLI's peak RSS (VmHWM, read
 *                at exit by a preloaded probe) over `node -e 0`'s own
 *                (one copy: the CRCs on libuv's pool; noneFrozenCrcInline on
 *                the main thread, noneFrozenCrcThread on a worker thread;
 *                noneFrozenBefore: 16 pipes and the CRCs on the main thread)
 *   criu         `criu dump --leave-running --shell-job`, wall and CPU
 * tsnap runs as the command a user types (bin/tsnap, whose line 2 starts
 * node without NODE_EXTRA_CA_CERTS and with --single-threaded-gc), the probe
 * preloaded through NODE_OPTIONS; before 2026-12-04 this bench ran
 * `node -r probe bin/tsnap`, which skips line 2: where NODE_EXTRA_CA_CERTS
 * is set (this machine), node parsed the CA bundle at every start, ~27 ms of
 * CPU a dump that `tsnap dump` does not spend (BENCH_FLOOR_LAUNCH_AB=1 runs
 * both, interleaved: noneFrozenNode, noneKillNode). nodeFloor is node as
 * line 2 starts it.
 * On cores shared with other work the wall follows the CPU time, so both
 * are reported as ratios to CRIU.
 * Medians of REPS (BENCH_REPS, default 5) after a warm-up; ratios to CRIU
 * and to the floors of the same run. BENCH_FLOOR_KILL=1 adds kill mode
 * (a fresh target per run; slow: each fills 1 GiB). BENCH_FLOOR_BASELINE=
 * <another checkout's bin/tsnap> adds its noneFrozen and lz4Frozen
 * (noneFrozenBase, lz4FrozenBase), to compare two builds in one run;
 * BENCH_FLOOR_ONLY=a,b runs only those cases (and the floors). With
 * BENCH_FLOOR_KILL=1 too, kill mode runs the baseline as well (noneKillBase).
 * BENCH_RT=1 runs the tools in the real-time class (see RT below).
 * Standalone: node dist/bench/floor.js
 */
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, readFileSync, openSync, writeSync, closeSync, readdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import koffi from 'koffi';
import { VmCopier, setCloexec } from '../src/sys/index.js';

// CPU time of waited-for children (RUSAGE_CHILDREN), the figure that decides
// the wall time when the cores are shared: bench-only, outside the tool.
const getrusage = koffi.load('libc.so.6').func('int getrusage(int who, void *usage)') as (who: number, buf: Buffer) => number;
function childrenCpuS(): number {
  const ru = Buffer.alloc(144);
  getrusage(-1, ru);
  const tv = (o: number) => Number(ru.readBigInt64LE(o)) + Number(ru.readBigInt64LE(o + 8)) / 1e6;
  return tv(0) + tv(16);
}

const TSNAP = fileURLToPath(new URL('../../bin/tsnap', import.meta.url));
const SIZE_MIB = Number(process.env.BENCH_MIB ?? 1024);
const REPS = Number(process.env.BENCH_REPS ?? 5);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';
const KILL = process.env.BENCH_FLOOR_KILL === '1';
/** BENCH_FLOOR_KILL_AB=1 (with KILL): kill mode also with TSNAP_CRC_VCLMUL=0 (the 128-bit CRC loop), interleaved. */
const KILL_AB = process.env.BENCH_FLOOR_KILL_AB === '1';
const BASELINE = process.env.BENCH_FLOOR_BASELINE;
/** BENCH_FLOOR_LAUNCH_AB=1: tsnap also started as `node -r probe bin/tsnap` (noneFrozenNode, noneKillNode), interleaved. */
const LAUNCH_AB = process.env.BENCH_FLOOR_LAUNCH_AB === '1';
/**
 * BENCH_RT=1: every tsnap and CRIU run (and the target) in the real-time
 * class (SCHED_FIFO 10, `chrt`), so the other work on shared cores stays
 * out of their wall: what a quiet machine gives, on a loaded one. Each run
 * is followed by a 1 s pause that gives the cores back to the others.
 */
const RT = process.env.BENCH_RT === '1';
/** BENCH_RT_PRIO: the SCHED_FIFO priority (10 unless set; higher preempts other real-time work on the machine). */
const RT_PRIO = String(Number(process.env.BENCH_RT_PRIO ?? 10) || 10);
// SIGUSR2 ignored (kept across exec; node's handler is the probe's): a real-time task sampler of
// another run on the machine (SAMPLER_SIGNAL_HOT_MS) signals every real-time thread hot that long,
// whose default action ended 1 GiB dumps of tsnap and CRIU alike.
const rtWrap = (cmd: string, args: string[]): [string, string[]] => (RT ? ['sh', ['-c', 'trap "" USR2; exec "$@"', 'sh', 'chrt', '-f', RT_PRIO, cmd, ...args]] : [cmd, args]);
const rtPause = () => { if (RT) spawnSync('sleep', ['1']); };

const FIXTURE = `
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) {
  syscall(SYS_close_range, 3, ~0u, 0);
  size_t n = (size_t)atol(argv[1]) << 20;
  uint64_t *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  /* Half of each page pseudo-random (incompressible), half small integers. */
  for (size_t i = 0; i < n / 8; i++) p[i] = (i % 512 < 256) ? i * 0x9E3779B97F4A7C15ull : (i & 0xff);
  printf("READY %p\\n", (void *)p); fflush(stdout);
  /* Node's stdio pipes are unix sockets, which CRIU refuses as external. */
  int null = open("/dev/null", O_RDWR); dup2(null, 1); dup2(null, 2); close(null);
  for (;;) pause();
}`;

// Preloaded into the measured node process: its peak RSS, read as it exits.
const PROBE = `if (process.env.TSNAP_BENCH_RT === '1') process.on('SIGUSR2', () => {});
process.on('exit', () => {
  const m = /VmHWM:\\s+(\\d+)/.exec(require('fs').readFileSync('/proc/self/status', 'utf8'));
  require('fs').writeFileSync(process.env.TSNAP_HWM_OUT, m ? m[1] : '0');
});`;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

function findCriu(): string | null {
  for (const c of [process.env.TSNAP_CRIU, 'criu'].filter((x): x is string => !!x)) {
    if (spawnSync(c, ['check'], { stdio: 'ignore' }).status === 0) return c;
  }
  return null;
}

async function startTarget(bin: string): Promise<{ child: ChildProcess; addr: number }> {
  const child = spawn(bin, [String(SIZE_MIB)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const line: string = await new Promise((resolve) => createInterface({ input: child.stdout! }).once('line', resolve));
  return { child, addr: Number(BigInt(line.split(' ')[1])) };
}

async function main(): Promise<void> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-floor-'));
  const bin = join(work, 'fill');
  writeFileSync(`${bin}.c`, FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, `${bin}.c`]);
  const probe = join(work, 'hwm.cjs');
  writeFileSync(probe, PROBE);
  const hwmOut = join(work, 'hwm');
  const criu = findCriu();
  const dir = join(OUT_ROOT, `tsnap-bench-floor-${process.pid}`);
  const targets: ChildProcess[] = [];
  try {
    const t = await startTarget(bin);
    targets.push(t.child);
    const pid = t.child.pid!;
    // Its remote syscalls (tsnap's vmsplice steps, CRIU's parasite) run in it: the same class as the tools.
    if (RT) execFileSync('chrt', ['-f', '-p', RT_PRIO, String(pid)]);
    const bytes = SIZE_MIB << 20;
    const copier = new VmCopier(pid);
    const buf = Buffer.alloc(1 << 20);
    const cpuS = (c0: NodeJS.CpuUsage) => { const c = process.cpuUsage(c0); return (c.user + c.system) / 1e6; };
    const secs = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e9;
    const rawReadv = () => {
      const t0 = process.hrtime.bigint();
      for (let a = t.addr; a < t.addr + bytes; a += buf.length) copier.readv(buf, 0, [{ addr: a, len: buf.length }]);
      return secs(t0);
    };
    const readvWrite = () => {
      const path = join(OUT_ROOT, `tsnap-bench-floor-raw-${process.pid}`);
      const fd = openSync(path, 'w', 0o600);
      const t0 = process.hrtime.bigint();
      for (let a = t.addr; a < t.addr + bytes; a += buf.length) {
        copier.readv(buf, 0, [{ addr: a, len: buf.length }]);
        writeSync(fd, buf);
      }
      const s = secs(t0);
      closeSync(fd);
      rmSync(path, { force: true });
      return s;
    };
    /**
     * Wall seconds, CPU seconds (user + system, all threads) and peak RSS (KiB) of one node run.
     * `command`: args[0] is run as a command (bin/tsnap: its line 2 starts node as a user's
     * `tsnap` does), the probe preloaded through NODE_OPTIONS; else `node -r probe ARGS`.
     */
    const nodeRun = (args: string[], env: Record<string, string> = {}, command = false): { s: number; cpu: number; hwmKiB: number; stdout: string } => {
      rmSync(hwmOut, { force: true });
      const c0 = childrenCpuS();
      const t0 = process.hrtime.bigint();
      const [cmd, argv] = command ? [args[0], args.slice(1)] : [process.execPath, ['-r', probe, ...args]];
      const preload = command ? { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --require ${probe}`.trim() } : {};
      const r = spawnSync(...rtWrap(cmd, argv), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env, ...preload, TSNAP_HWM_OUT: hwmOut, ...(RT ? { TSNAP_BENCH_RT: '1' } : {}) } });
      const s = secs(t0);
      rtPause();
      if (r.status !== 0) throw new Error(`node ${args.join(' ')}: exit ${r.status ?? r.signal}: ${r.stderr}`);
      return { s, cpu: childrenCpuS() - c0, hwmKiB: existsSync(hwmOut) ? Number(readFileSync(hwmOut, 'utf8')) : NaN, stdout: String(r.stdout) };
    };
    const tsnapDump = (target: number, compress: 'none' | 'lz4', extra: string[], env: Record<string, string> = {}, tsnap = TSNAP, command = true) => {
      rmSync(dir, { recursive: true, force: true });
      const r = nodeRun([tsnap, 'dump', '--pid', String(target), '--dir', dir, '--compress', compress, '--json', ...extra], env, command);
      rmSync(dir, { recursive: true, force: true });
      // How long the target was stopped (the dump's own stats): the wall of a frozen copy is mostly that.
      let frozenS = NaN;
      try { frozenS = (JSON.parse(r.stdout.trim().split('\n').pop()!) as { stats: { frozenUs: number } }).stats.frozenUs / 1e6; } catch { /* not reported */ }
      return { ...r, frozenS };
    };
    const criuDump = (target: number, extra: string[]) => {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { mode: 0o700 });
      const c0 = childrenCpuS();
      const t0 = process.hrtime.bigint();
      const r = spawnSync(...rtWrap(criu!, ['dump', '-t', String(target), '-D', dir, '--shell-job', ...extra]), { stdio: ['ignore', 'ignore', 'pipe'] });
      const s = secs(t0);
      const cpu = childrenCpuS() - c0;
      rtPause();
      if (r.status !== 0) throw new Error(`criu dump: exit ${r.status ?? r.signal}: ${r.stderr}`);
      rmSync(dir, { recursive: true, force: true });
      return { s, cpu };
    };

    const runs: Record<string, number[]> = {};
    const put = (k: string, v: number) => { (runs[k] ??= []).push(v); };
    const cases: [string, () => void][] = [
      // Node as bin/tsnap's line 2 starts it (without NODE_EXTRA_CA_CERTS, which it unsets).
      ['nodeFloor', () => { const r = nodeRun(['--single-threaded-gc', '-e', '0'], { NODE_EXTRA_CA_CERTS: '' }); put('nodeFloorS', r.s); put('nodeFloorCpu', r.cpu); put('nodeHwmKiB', r.hwmKiB); }],
      // tsnap started as before 2026-12-04: `node -r probe bin/tsnap`, which skips line 2, so node parsed NODE_EXTRA_CA_CERTS
      // where it is set (~27 ms of CPU per run here) and collected on its background threads (BENCH_FLOOR_LAUNCH_AB=1).
      ...(LAUNCH_AB ? [['noneFrozenNode', () => { const r = tsnapDump(pid, 'none', ['--leave-running', '--no-cow'], {}, TSNAP, false); put('noneFrozenNodeS', r.s); put('noneFrozenNodeCpu', r.cpu); put('noneFrozenNodeHwmKiB', r.hwmKiB); put('noneFrozenNodeFrozen', r.frozenS); }] as [string, () => void]] : []),
      ['rawReadv', () => { const c0 = process.cpuUsage(); put('rawReadvS', rawReadv()); put('rawReadvCpu', cpuS(c0)); }],
      ['readvWrite', () => { const c0 = process.cpuUsage(); put('readvWriteS', readvWrite()); put('readvWriteCpu', cpuS(c0)); }],
      ['noneCow', () => { const r = tsnapDump(pid, 'none', ['--leave-running']); put('noneCowS', r.s); put('noneCowCpu', r.cpu); put('noneCowHwmKiB', r.hwmKiB); }],
      ['noneFrozen', () => { const r = tsnapDump(pid, 'none', ['--leave-running', '--no-cow']); put('noneFrozenS', r.s); put('noneFrozenCpu', r.cpu); put('noneFrozenHwmKiB', r.hwmKiB); put('noneFrozenFrozen', r.frozenS); }],
      // The one-copy path with its page data in one file (format 1), spliced by the main thread alone: the default before session 22.
      ['noneFrozenOneFile', () => { const r = tsnapDump(pid, 'none', ['--leave-running', '--no-cow'], { TSNAP_SPLICE_FILES: '1' }); put('noneFrozenOneFileS', r.s); put('noneFrozenOneFileCpu', r.cpu); put('noneFrozenOneFileHwmKiB', r.hwmKiB); put('noneFrozenOneFileFrozen', r.frozenS); }],
      // The default with 32 pipes per remote step (33 steps per GiB; the default is 48: 22 steps).
      ['noneFrozen32', () => { const r = tsnapDump(pid, 'none', ['--leave-running', '--no-cow'], { TSNAP_SPLICE_PIPES: '32' }); put('noneFrozen32S', r.s); put('noneFrozen32Cpu', r.cpu); put('noneFrozen32HwmKiB', r.hwmKiB); put('noneFrozen32Frozen', r.frozenS); }],
      // The default with the CRCs' 128-bit PCLMULQDQ loop instead of the 512-bit VPCLMULQDQ one (TSNAP_CRC_VCLMUL=0: as before 2026-12-03).
      ['noneFrozenCrc128', () => { const r = tsnapDump(pid, 'none', ['--leave-running', '--no-cow'], { TSNAP_CRC_VCLMUL: '0' }); put('noneFrozenCrc128S', r.s); put('noneFrozenCrc128Cpu', r.cpu); put('noneFrozenCrc128HwmKiB', r.hwmKiB); put('noneFrozenCrc128Frozen', r.frozenS); }],
      // Two files, every CRC by the pool's reader after the splices (not by the splicing threads).
      ['noneFrozenReader', () => { const r = tsnapDump(pid, 'none', ['--leave-running', '--no-cow'], { TSNAP_SPLICE_HOT_CRC: '0' }); put('noneFrozenReaderS', r.s); put('noneFrozenReaderCpu', r.cpu); put('noneFrozenReaderHwmKiB', r.hwmKiB); put('noneFrozenReaderFrozen', r.frozenS); }],
      // The one-copy path as on main before session 22: one file, every CRC by the pool's reader after the splices.
      ['noneFrozenMain', () => { const r = tsnapDump(pid, 'none', ['--leave-running', '--no-cow'], { TSNAP_SPLICE_FILES: '1', TSNAP_SPLICE_HOT_CRC: '0' }); put('noneFrozenMainS', r.s); put('noneFrozenMainCpu', r.cpu); put('noneFrozenMainHwmKiB', r.hwmKiB); put('noneFrozenMainFrozen', r.frozenS); }],
      // The one-copy path with its CRCs on a thread of their own (opt-in: a shorter freeze, more RSS).
      ['noneFrozenCrcThread', () => { const r = tsnapDump(pid, 'none', ['--leave-running', '--no-cow'], { TSNAP_SPLICE_CRC_THREAD: '1' }); put('noneFrozenCrcThreadS', r.s); put('noneFrozenCrcThreadCpu', r.cpu); put('noneFrozenCrcThreadHwmKiB', r.hwmKiB); put('noneFrozenCrcThreadFrozen', r.frozenS); }],
      // The one-copy path with its CRCs on the main thread between splices (the default before the pool).
      ['noneFrozenCrcInline', () => { const r = tsnapDump(pid, 'none', ['--leave-running', '--no-cow'], { TSNAP_SPLICE_CRC: 'inline' }); put('noneFrozenCrcInlineS', r.s); put('noneFrozenCrcInlineCpu', r.cpu); put('noneFrozenCrcInlineHwmKiB', r.hwmKiB); put('noneFrozenCrcInlineFrozen', r.frozenS); }],
      // The one-copy path as it was before (16 pipes, 16 MiB per remote step, CRCs on the main thread).
      ['noneFrozenBefore', () => { const r = tsnapDump(pid, 'none', ['--leave-running', '--no-cow'], { TSNAP_SPLICE_CRC: 'inline', TSNAP_SPLICE_PIPES: '16' }); put('noneFrozenBeforeS', r.s); put('noneFrozenBeforeCpu', r.cpu); put('noneFrozenBeforeHwmKiB', r.hwmKiB); put('noneFrozenBeforeFrozen', r.frozenS); }],
      // The same with the one-copy path off: the two copies it replaces, in the same run.
      ['noneFrozenTwoCopy', () => { const r = tsnapDump(pid, 'none', ['--leave-running', '--no-cow'], { TSNAP_SPLICE: '0' }); put('noneFrozenTwoCopyS', r.s); put('noneFrozenTwoCopyCpu', r.cpu); put('noneFrozenTwoCopyHwmKiB', r.hwmKiB); put('noneFrozenTwoCopyFrozen', r.frozenS); }],
      ['lz4Frozen', () => { const r = tsnapDump(pid, 'lz4', ['--leave-running', '--no-cow']); put('lz4FrozenS', r.s); put('lz4FrozenCpu', r.cpu); put('lz4FrozenHwmKiB', r.hwmKiB); }],
      ['lz4Cow', () => { const r = tsnapDump(pid, 'lz4', ['--leave-running']); put('lz4CowS', r.s); put('lz4CowCpu', r.cpu); put('lz4CowHwmKiB', r.hwmKiB); }],
      ...(BASELINE ? [
        ['noneFrozenBase', () => { const r = tsnapDump(pid, 'none', ['--leave-running', '--no-cow'], {}, BASELINE); put('noneFrozenBaseS', r.s); put('noneFrozenBaseCpu', r.cpu); put('noneFrozenBaseHwmKiB', r.hwmKiB); put('noneFrozenBaseFrozen', r.frozenS); }],
        ['lz4FrozenBase', () => { const r = tsnapDump(pid, 'lz4', ['--leave-running', '--no-cow'], {}, BASELINE); put('lz4FrozenBaseS', r.s); put('lz4FrozenBaseCpu', r.cpu); put('lz4FrozenBaseHwmKiB', r.hwmKiB); }],
      ] as [string, () => void][] : []),
      ...(criu ? [['criu', () => { const r = criuDump(pid, ['--leave-running']); put('criuS', r.s); put('criuCpu', r.cpu); }] as [string, () => void]] : []),
    ];
    const only = process.env.BENCH_FLOOR_ONLY?.split(',');
    const chosen = only ? cases.filter(([k]) => k === 'nodeFloor' || k === 'rawReadv' || only.includes(k)) : cases;
    // Warm-up: every path once, so first-touch costs of this VM stay out.
    for (const [, f] of chosen) f();
    for (const k of Object.keys(runs)) runs[k] = [];
    for (let i = 0; i < REPS; i++) for (const [, f] of chosen) f();

    if (KILL) {
      for (let i = 0; i < REPS; i++) {
        for (const tool of ['tsnap', ...(KILL_AB ? ['tsnap128'] : []), ...(BASELINE ? ['tsnapBase'] : []), ...(LAUNCH_AB ? ['tsnapNode'] : []), ...(criu ? ['criu'] : [])]) {
          const k = await startTarget(bin);
          targets.push(k.child);
          if (tool === 'tsnap') { const r = tsnapDump(k.child.pid!, 'none', []); put('noneKillS', r.s); put('noneKillCpu', r.cpu); put('noneKillHwmKiB', r.hwmKiB); put('noneKillFrozen', r.frozenS); }
          else if (tool === 'tsnapNode') { const r = tsnapDump(k.child.pid!, 'none', [], {}, TSNAP, false); put('noneKillNodeS', r.s); put('noneKillNodeCpu', r.cpu); put('noneKillNodeFrozen', r.frozenS); }
          else if (tool === 'tsnapBase') { const r = tsnapDump(k.child.pid!, 'none', [], {}, BASELINE); put('noneKillBaseS', r.s); put('noneKillBaseCpu', r.cpu); put('noneKillBaseFrozen', r.frozenS); }
          else if (tool === 'tsnap128') { const r = tsnapDump(k.child.pid!, 'none', [], { TSNAP_CRC_VCLMUL: '0' }); put('noneKillCrc128S', r.s); put('noneKillCrc128Cpu', r.cpu); put('noneKillCrc128Frozen', r.frozenS); }
          else { const r = criuDump(k.child.pid!, []); put('criuKillS', r.s); put('criuKillCpu', r.cpu); }
          k.child.kill('SIGKILL');
        }
      }
    }

    const m = (k: string) => median(runs[k] ?? []);
    const ms = (k: string) => +(m(k) * 1000).toFixed(0);
    const ratio = (a: string, b: string) => (runs[a] && runs[b] ? +(m(a) / m(b)).toFixed(2) : null);
    const overNode = (k: string) => (runs[k] ? +((m(k) - m('nodeHwmKiB')) / 1024).toFixed(1) : null);
    const report = {
      sizeMiB: SIZE_MIB, reps: REPS, outDir: OUT_ROOT, criu: !!criu, realTime: RT ? Number(RT_PRIO) : false, load: readFileSync('/proc/loadavg', 'utf8').trim(),
      // Every repetition's wall, in run order (the medians above hide how much a loaded machine swings).
      wallRunsMs: Object.fromEntries(Object.keys(runs).filter((k) => k.endsWith('S') && k !== 'nodeFloorS').map((k) => [k, runs[k].map((v) => Math.round(v * 1000))])),
      wallMs: Object.fromEntries(Object.keys(runs).filter((k) => k.endsWith('S')).map((k) => [k, ms(k)])),
      // user + system of the whole tool (every thread), the same for CRIU: on shared cores the wall follows it.
      frozenMs: Object.fromEntries(Object.keys(runs).filter((k) => k.endsWith('Frozen')).map((k) => [k, ms(k)])),
      cpuMs: Object.fromEntries(Object.keys(runs).filter((k) => k.endsWith('Cpu')).map((k) => [k, ms(k)])),
      cpuVsCriu: {
        noneCow: ratio('noneCowCpu', 'criuCpu'), noneFrozen: ratio('noneFrozenCpu', 'criuCpu'), noneFrozenOneFile: ratio('noneFrozenOneFileCpu', 'criuCpu'), noneFrozenMain: ratio('noneFrozenMainCpu', 'criuCpu'), noneFrozen32: ratio('noneFrozen32Cpu', 'criuCpu'), noneFrozenReader: ratio('noneFrozenReaderCpu', 'criuCpu'), noneFrozenCrc128: ratio('noneFrozenCrc128Cpu', 'criuCpu'), noneFrozenTwoCopy: ratio('noneFrozenTwoCopyCpu', 'criuCpu'), noneFrozenCrcThread: ratio('noneFrozenCrcThreadCpu', 'criuCpu'), noneFrozenCrcInline: ratio('noneFrozenCrcInlineCpu', 'criuCpu'), noneFrozenBefore: ratio('noneFrozenBeforeCpu', 'criuCpu'), lz4Frozen: ratio('lz4FrozenCpu', 'criuCpu'), lz4Cow: ratio('lz4CowCpu', 'criuCpu'),
        ...(KILL ? { noneKill: ratio('noneKillCpu', 'criuKillCpu') } : {}),
      },
      vsCriu: {
        noneCow: ratio('noneCowS', 'criuS'), noneFrozen: ratio('noneFrozenS', 'criuS'), noneFrozenOneFile: ratio('noneFrozenOneFileS', 'criuS'), noneFrozenMain: ratio('noneFrozenMainS', 'criuS'), noneFrozen32: ratio('noneFrozen32S', 'criuS'), noneFrozenReader: ratio('noneFrozenReaderS', 'criuS'), noneFrozenCrc128: ratio('noneFrozenCrc128S', 'criuS'), noneFrozenTwoCopy: ratio('noneFrozenTwoCopyS', 'criuS'), noneFrozenCrcThread: ratio('noneFrozenCrcThreadS', 'criuS'), noneFrozenCrcInline: ratio('noneFrozenCrcInlineS', 'criuS'), noneFrozenBefore: ratio('noneFrozenBeforeS', 'criuS'), lz4Frozen: ratio('lz4FrozenS', 'criuS'), lz4Cow: ratio('lz4CowS', 'criuS'),
        ...(KILL ? { noneKill: ratio('noneKillS', 'criuKillS') } : {}),
        ...(KILL_AB ? { noneKillCrc128: ratio('noneKillCrc128S', 'criuKillS') } : {}),
        ...(KILL && BASELINE ? { noneKillBase: ratio('noneKillBaseS', 'criuKillS') } : {}),
        ...(LAUNCH_AB ? { noneFrozenNode: ratio('noneFrozenNodeS', 'criuS'), ...(KILL ? { noneKillNode: ratio('noneKillNodeS', 'criuKillS') } : {}) } : {}),
      },
      // This build against BENCH_FLOOR_BASELINE's, interleaved (frozen: noneFrozenBase; kill mode: noneKillBase).
      vsBaseline: {
        frozenWall: ratio('noneFrozenS', 'noneFrozenBaseS'), frozenCpu: ratio('noneFrozenCpu', 'noneFrozenBaseCpu'),
        killWall: ratio('noneKillS', 'noneKillBaseS'), killCpu: ratio('noneKillCpu', 'noneKillBaseCpu'),
      },
      // Started as a command against `node -r probe bin/tsnap`, interleaved (BENCH_FLOOR_LAUNCH_AB=1).
      commandVsNode: {
        frozenWall: ratio('noneFrozenS', 'noneFrozenNodeS'), frozenCpu: ratio('noneFrozenCpu', 'noneFrozenNodeCpu'),
        killWall: ratio('noneKillS', 'noneKillNodeS'), killCpu: ratio('noneKillCpu', 'noneKillNodeCpu'),
      },
      oneCopyVsTwo: { wall: ratio('noneFrozenS', 'noneFrozenTwoCopyS'), cpu: ratio('noneFrozenCpu', 'noneFrozenTwoCopyCpu') },
      // Two pages files (the default from 64 MiB) against one, interleaved.
      twoFilesVsOne: { wall: ratio('noneFrozenS', 'noneFrozenOneFileS'), frozen: ratio('noneFrozenFrozen', 'noneFrozenOneFileFrozen'), cpu: ratio('noneFrozenCpu', 'noneFrozenOneFileCpu') },
      // This branch's default against main's (one file, the pool's reader for every CRC).
      pipes48Vs32: { wall: ratio('noneFrozenS', 'noneFrozen32S'), frozen: ratio('noneFrozenFrozen', 'noneFrozen32Frozen'), cpu: ratio('noneFrozenCpu', 'noneFrozen32Cpu') },
      hotCrcVsReader: { wall: ratio('noneFrozenS', 'noneFrozenReaderS'), frozen: ratio('noneFrozenFrozen', 'noneFrozenReaderFrozen'), cpu: ratio('noneFrozenCpu', 'noneFrozenReaderCpu') },
      // The 512-bit CRC loop against the 128-bit one, interleaved.
      vclmulVs128: { wall: ratio('noneFrozenS', 'noneFrozenCrc128S'), frozen: ratio('noneFrozenFrozen', 'noneFrozenCrc128Frozen'), cpu: ratio('noneFrozenCpu', 'noneFrozenCrc128Cpu') },
      nowVsMain: { wall: ratio('noneFrozenS', 'noneFrozenMainS'), frozen: ratio('noneFrozenFrozen', 'noneFrozenMainFrozen'), cpu: ratio('noneFrozenCpu', 'noneFrozenMainCpu') },
      cpuVsReadvWrite: { noneFrozen: ratio('noneFrozenCpu', 'readvWriteCpu'), lz4Frozen: ratio('lz4FrozenCpu', 'readvWriteCpu'), criu: ratio('criuCpu', 'readvWriteCpu') },
      vsReadvWrite: { noneCow: ratio('noneCowS', 'readvWriteS'), noneFrozen: ratio('noneFrozenS', 'readvWriteS'), criu: ratio('criuS', 'readvWriteS') },
      vsRawReadv: { noneCow: ratio('noneCowS', 'rawReadvS'), criu: ratio('criuS', 'rawReadvS') },
      peakRssOverNodeMiB: { nodeBaselineMiB: +(m('nodeHwmKiB') / 1024).toFixed(1), noneCow: overNode('noneCowHwmKiB'), noneFrozen: overNode('noneFrozenHwmKiB'), noneFrozenOneFile: overNode('noneFrozenOneFileHwmKiB'), noneFrozenMain: overNode('noneFrozenMainHwmKiB'), noneFrozenReader: overNode('noneFrozenReaderHwmKiB'), noneFrozenCrcThread: overNode('noneFrozenCrcThreadHwmKiB'), noneFrozenCrcInline: overNode('noneFrozenCrcInlineHwmKiB'), noneFrozenBefore: overNode('noneFrozenBeforeHwmKiB'), noneFrozenTwoCopy: overNode('noneFrozenTwoCopyHwmKiB'), lz4Frozen: overNode('lz4FrozenHwmKiB'), lz4Cow: overNode('lz4CowHwmKiB'), ...(KILL ? { noneKill: overNode('noneKillHwmKiB') } : {}), ...(BASELINE ? { noneFrozenBase: overNode('noneFrozenBaseHwmKiB'), lz4FrozenBase: overNode('lz4FrozenBaseHwmKiB') } : {}) },
    };
    console.log(JSON.stringify(report, null, 2));
  } finally {
    for (const c of targets) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => { console.error(err); process.exit(1); });

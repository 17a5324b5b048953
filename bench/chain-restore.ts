/**
 * `npm run bench` (part) and `node dist/bench/chain-restore.js`: restore of
 * a 3-level chain (pre-dump, pre-dump, dump; a fifth of the pages rewritten
 * between levels, scattered) against the restore of one image of the same
 * memory, BENCH_CHAIN_MIB (64) MiB, in the same run: wall time of restore()
 * (medians of BENCH_REPS, 5, after a warm-up of each), the CPU time
 * (tsnap's and the new task's) and the process_vm_writev calls each made.
 * BENCH_AB_OTHER=/path/to/other/checkout (its dist/ built): both images are
 * also restored by that build (A) in the same process, interleaved with
 * this one's (B) in the order A B B A..., and the B / A ratios printed: a
 * change measured against its baseline in one run. BENCH_CHAIN_CLI=N: then
 * N restores of each image through the CLI of each build, one cold process
 * each (`tsnap restore --new-pid --detach`), interleaved: wall until tsnap
 * exits, CPU = tsnap's and its helper's (this process's reaped children,
 * 10 ms ticks) plus the new task's. BENCH_AB_ENV="K=V[,K=V...]" instead of
 * BENCH_AB_OTHER: A is this build with those variables set around each of
 * its restores (and in its CLI's environment), e.g.
 * TSNAP_FILL_CHAIN_FUSED=0: a switch measured against the default in one run.
 */
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { pathToFileURL, fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { dump, preDump } from '../src/dump/dump.js';
import { restore } from '../src/restore/restore.js';
import { untrackPid } from '../src/track/untrack.js';
import { ptrace, kill, setCloexec, VmCopier } from '../src/sys/index.js';

type Restore = typeof restore;

/** CPU ms of every thread of `pid` so far (ns precision, unlike /proc/PID/stat's 10 ms ticks). */
function schedMs(pid: number): number {
  let ns = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
  return ns / 1e6;
}

const MIB = Number(process.env.BENCH_CHAIN_MIB ?? 64);
const REPS = Number(process.env.BENCH_REPS ?? 5);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';
const CLI_REPS = Number(process.env.BENCH_CHAIN_CLI ?? 0);
/** This checkout (dist/bench/ is two levels below it). */
const HERE = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** CPU ms of this process's reaped children (USER_HZ = 100: 10 ms ticks). */
function childrenCpuMs(): number {
  const stat = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  return (Number(stat[13]) + Number(stat[14])) * 10;
}

/** One cold CLI restore of `dir` by the checkout at `root`: wall until tsnap exits, CPU of tsnap, its helper and the new task. */
function cliOnce(root: string, dir: string, pidfile: string, env: Record<string, string> = {}): { t: number; cpu: number } {
  rmSync(pidfile, { force: true });
  const c0 = childrenCpuMs();
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [join(root, 'bin/tsnap'), 'restore', '--dir', dir, '--new-pid', '--detach', '--pidfile', pidfile, '--stdin', '/dev/null', '--stdout', '/dev/null', '--stderr', '/dev/null'], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  const t = ms(t0);
  if (r.status !== 0) throw new Error(`${root}: tsnap restore --dir ${dir} failed (${r.status}): ${String(r.stderr).trim()}`);
  const pid = Number(readFileSync(pidfile, 'utf8').trim());
  const cpu = childrenCpuMs() - c0 + schedMs(pid);
  kill(pid, 9);
  return { t, cpu };
}

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
    type Sample = { t: number; calls: number; cpu: number };
    const other = process.env.BENCH_AB_OTHER;
    const builds: { name: string; restore: Restore; writeCalls: () => number; env?: Record<string, string> }[] = [{ name: 'B', restore, writeCalls: () => VmCopier.writeCalls }];
    const abEnv = other ? undefined : process.env.BENCH_AB_ENV;
    if (abEnv) {
      const env = Object.fromEntries(abEnv.split(',').map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
      const withEnv: Restore = async (o) => {
        const saved = Object.keys(env).map((k) => [k, process.env[k]] as const);
        Object.assign(process.env, env);
        try {
          return await restore(o);
        } finally {
          for (const [k, v] of saved) if (v === undefined) delete process.env[k]; else process.env[k] = v;
        }
      };
      builds.unshift({ name: 'A', restore: withEnv, writeCalls: () => VmCopier.writeCalls, env });
    }
    if (other) {
      const url = (f: string) => pathToFileURL(resolve(other, 'dist', f)).href;
      const a = (await import(url('src/restore/restore.js'))) as { restore: Restore };
      const sys = (await import(url('src/sys/index.js'))) as { VmCopier: { writeCalls: number } };
      builds.unshift({ name: 'A', restore: a.restore, writeCalls: () => sys.VmCopier.writeCalls });
    }
    const once = async (b: (typeof builds)[number], dir: string): Promise<Sample> => {
      const c0 = b.writeCalls();
      const u0 = process.cpuUsage();
      const t0 = process.hrtime.bigint();
      const r = await b.restore({ dir, newPid: true, check: 'off' });
      const t = ms(t0);
      const u = process.cpuUsage(u0);
      const cpu = (u.user + u.system) / 1000 + schedMs(r.pid);
      kill(r.pid, 9);
      try { ptrace.waitpidBlocking(r.pid); } catch { /* reaped */ }
      return { t, calls: b.writeCalls() - c0, cpu };
    };
    const samples = new Map(builds.map((b) => [b.name, { one: [] as Sample[], chain: [] as Sample[] }]));
    for (const b of builds) { await once(b, one); await once(b, level(3)); }
    const load0 = loadavg()[0];
    for (let i = 0; i < REPS; i++) {
      const order = i % 2 ? [...builds].reverse() : builds;
      for (const b of order) {
        samples.get(b.name)!.one.push(await once(b, one));
        samples.get(b.name)!.chain.push(await once(b, level(3)));
      }
    }
    const load = `load ${load0.toFixed(1)}-${loadavg()[0].toFixed(1)}`;
    const med = new Map<string, { ta: number; tb: number; ca: number; cb: number }>();
    for (const b of builds) {
      const { one: a, chain: c } = samples.get(b.name)!;
      const m = { ta: median(a.map((x) => x.t)), tb: median(c.map((x) => x.t)), ca: median(a.map((x) => x.cpu)), cb: median(c.map((x) => x.cpu)) };
      med.set(b.name, m);
      const label = other || abEnv ? ` ${b.name} (${b.name === 'A' ? other ?? abEnv : 'this build'})` : '';
      console.log(`${MIB} MiB restore${label} (${load}): one image ${m.ta.toFixed(1)} ms (${a[0].calls} process_vm_writev), 3-level chain ${m.tb.toFixed(1)} ms (${c[0].calls} process_vm_writev); chain/one ${(m.tb / m.ta).toFixed(3)}; CPU (tsnap + task) ${m.ca.toFixed(0)} / ${m.cb.toFixed(0)} ms (${(m.cb / m.ca).toFixed(3)})`);
    }
    if (CLI_REPS > 0) {
      const roots = new Map(builds.map((b) => [b.name, b.name === 'A' && other ? resolve(other) : HERE]));
      const envs = new Map(builds.map((b) => [b.name, b.env ?? {}]));
      const pidfile = join(root, 'cli.pid');
      const cli = new Map(builds.map((b) => [b.name, { one: [] as { t: number; cpu: number }[], chain: [] as { t: number; cpu: number }[] }]));
      for (const b of builds) { cliOnce(roots.get(b.name)!, one, pidfile, envs.get(b.name)); cliOnce(roots.get(b.name)!, level(3), pidfile, envs.get(b.name)); }
      const l0 = loadavg()[0];
      for (let i = 0; i < CLI_REPS; i++) {
        for (const b of i % 2 ? [...builds].reverse() : builds) {
          cli.get(b.name)!.one.push(cliOnce(roots.get(b.name)!, one, pidfile, envs.get(b.name)));
          cli.get(b.name)!.chain.push(cliOnce(roots.get(b.name)!, level(3), pidfile, envs.get(b.name)));
        }
      }
      for (const b of builds) {
        const { one: a, chain: c } = cli.get(b.name)!;
        const ta = median(a.map((x) => x.t));
        const tb = median(c.map((x) => x.t));
        const ca = median(a.map((x) => x.cpu));
        const cb = median(c.map((x) => x.cpu));
        console.log(`${MIB} MiB CLI restore${other || abEnv ? ` ${b.name}` : ''}, ${CLI_REPS} each (load ${l0.toFixed(1)}-${loadavg()[0].toFixed(1)}): one image ${ta.toFixed(0)} ms, 3-level chain ${tb.toFixed(0)} ms (${(tb / ta).toFixed(3)}); CPU ${ca.toFixed(0)} / ${cb.toFixed(0)} ms (${(cb / ca).toFixed(3)})`);
      }
    }
    if (other || abEnv) {
      const a = med.get('A')!;
      const b = med.get('B')!;
      console.log(`${MIB} MiB, B / A: chain wall ${(b.tb / a.tb).toFixed(3)}, CPU ${(b.cb / a.cb).toFixed(3)}; one image wall ${(b.ta / a.ta).toFixed(3)}, CPU ${(b.ca / a.ca).toFixed(3)}`);
    }
  } finally {
    try { kill(child.pid!, 9); } catch { /* gone */ }
    try { untrackPid(child.pid!); } catch { /* not tracked */ }
    rmSync(root, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });

/**
 * `node dist/bench/restore-alloc.js`: how much a warm restore of the
 * bench/vmas.ts process (BENCH_VMAS, 10 000 VMAs) allocates, and where.
 * BENCH_WARMUP (10) restores, then BENCH_REPS (20) under the inspector's
 * sampling heap profiler with the objects the collector freed included (what
 * the collector had to deal with, not what is left at the end, which is all
 * `node --heap-prof` shows). Prints MB per restore and the 25 largest
 * allocating functions (a builtin as "caller > builtin"), KB per restore.
 * BENCH_AB_CHECK: the self-check ('warn', the default, or 'off').
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Session } from 'node:inspector/promises';
import { dump } from '../src/dump/dump.js';
import { restore } from '../src/restore/restore.js';
import { ptrace, kill, setCloexec } from '../src/sys/index.js';
import { VMAS_FIXTURE } from './vmas-fixture.js';

const VMAS = Number(process.env.BENCH_VMAS ?? 10_000);
const REPS = Number(process.env.BENCH_REPS ?? 20);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 10);
const CHECK = (process.env.BENCH_AB_CHECK ?? 'warn') as 'warn' | 'off';

interface ProfileNode { callFrame: { functionName: string; url: string; lineNumber: number }; selfSize: number; children: ProfileNode[] }

async function main(): Promise<void> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-alloc-'));
  const bin = join(work, 'vmas');
  writeFileSync(`${bin}.c`, VMAS_FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, `${bin}.c`]);
  const child = spawn(bin, [String(VMAS)], { stdio: ['ignore', 'pipe', 'ignore'] });
  await new Promise((r) => createInterface({ input: child.stdout! }).once('line', r));
  const dir = join('/dev/shm', `tsnap-bench-alloc-${child.pid}`);
  const session = new Session();
  try {
    await dump({ pid: child.pid!, dir });
    const once = async () => {
      const r = await restore({ dir, newPid: true, check: CHECK });
      kill(r.pid, 9);
      try { ptrace.waitpidBlocking(r.pid); } catch { /* reaped */ }
    };
    for (let i = 0; i < WARMUP; i++) await once();
    session.connect();
    await session.post('HeapProfiler.startSampling', { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
    for (let i = 0; i < REPS; i++) await once();
    const { profile } = await session.post('HeapProfiler.stopSampling') as unknown as { profile: { head: ProfileNode } };
    const bytes = new Map<string, number>();
    const walk = (n: ProfileNode, caller: string) => {
      const cf = n.callFrame;
      const name = `${cf.functionName || '(anon)'} ${cf.url.split('/').pop()}:${cf.lineNumber}`;
      const key = cf.url ? name : `${caller} > ${name}`;
      bytes.set(key, (bytes.get(key) ?? 0) + n.selfSize);
      for (const c of n.children) walk(c, cf.url ? name : caller);
    };
    walk(profile.head, '');
    const all = [...bytes.values()].reduce((a, b) => a + b, 0);
    console.log(`${VMAS} VMAs restore, check ${CHECK} (load ${loadavg()[0].toFixed(1)}): ${(all / REPS / 1e6).toFixed(2)} MB allocated per restore (${REPS} after ${WARMUP} warm-ups)`);
    for (const [k, v] of [...bytes.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`${(v / REPS / 1024).toFixed(0).padStart(7)} KB  ${k}`);
  } finally {
    session.disconnect();
    try { kill(child.pid!, 9); } catch { /* gone */ }
    rmSync(dir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });

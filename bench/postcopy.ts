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
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { migrate } from '../src/migrate/sender.js';
import { buildDirtyWriter, startDirtyWriter, startNamespacedServe } from './streamed-rig.js';
import { setCloexec } from '../src/sys/index.js';


export async function benchPostcopyMigration(sizeMiB = Number(process.env.BENCH_PC_MIB ?? 256), runs = Number(process.env.BENCH_PC_RUNS ?? 1)): Promise<Record<string, unknown>> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-pc-'));
  const bin = buildDirtyWriter(work);
  const tsnapBin = new URL('../../bin/tsnap', import.meta.url).pathname;
  let port = 18850 + (process.pid % 40);
  const one = async (mbps: number, postcopy: boolean) => {
    const p = port++;
    const { srv } = await startNamespacedServe(tsnapBin, p, join(work, `in-${p}`));
    let child: ChildProcess | null = null;
    try {
      const w = await startDirtyWriter(bin, sizeMiB, mbps);
      child = w.shell;
      const sourcePid = w.pid;
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
    // BENCH_PC_RATES=100: one writer rate only.
    for (const mbps of (process.env.BENCH_PC_RATES ?? '10,100').split(',').map(Number)) {
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

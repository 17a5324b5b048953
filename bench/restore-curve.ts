/**
 * `node dist/bench/restore-curve.js`: BENCH_REPS (20) consecutive restores of one
 * image of the bench/vmas.ts process (10 000 VMAs) in one process, nothing
 * in between, self-check BENCH_AB_CHECK (warn or off); prints each as wall/tsnap CPU+task
 * CPU ms (the task's from /proc/PID/task/x/schedstat). Shows how many
 * restores the JIT takes to settle: what bench/vmas.ts's BENCH_WARMUP is for.
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dump } from '../src/dump/dump.js';
import { restore } from '../src/restore/restore.js';
import { ptrace, kill, setCloexec } from '../src/sys/index.js';
import { VMAS_FIXTURE } from './vmas-fixture.js';
/** CPU ms of every thread of `pid` so far. */
function schedMs(pid: number): number { let ns = 0; for (const t of readdirSync(`/proc/${pid}/task`)) ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]); return ns / 1e6; }
async function main() {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-curve-'));
  const bin = join(work, 'vmas'); writeFileSync(`${bin}.c`, VMAS_FIXTURE); execFileSync('gcc', ['-O2', '-o', bin, `${bin}.c`]);
  const child = spawn(bin, ['10000'], { stdio: ['ignore', 'pipe', 'ignore'] });
  await new Promise((r) => createInterface({ input: child.stdout! }).once('line', r));
  const dir = join('/dev/shm', `tsnap-bench-curve-${child.pid}`);
  await dump({ pid: child.pid!, dir });
  const N = Number(process.env.BENCH_REPS ?? 20);
  const check = (process.env.BENCH_AB_CHECK ?? 'warn') as 'warn' | 'off';
  const out: string[] = [];
  for (let i = 0; i < N; i++) {
    const c0 = process.cpuUsage(); const t0 = process.hrtime.bigint();
    const r = await restore({ dir, newPid: true, check });
    const wall = Number(process.hrtime.bigint() - t0) / 1e6; const c = process.cpuUsage(c0);
    const task = schedMs(r.pid); kill(r.pid, 9); try { ptrace.waitpidBlocking(r.pid); } catch { /* */ }
    out.push(`${wall.toFixed(0)}/${((c.user + c.system) / 1000).toFixed(0)}+${task.toFixed(0)}`);
  }
  console.log(`load ${loadavg()[0].toFixed(1)} check ${check}: ${out.join(' ')}`);
  // The dump ended the child (kill mode): kill() then throws ESRCH, and the image was left in /dev/shm.
  try { kill(child.pid!, 9); } catch { /* gone */ }
  rmSync(dir, { recursive: true, force: true }); rmSync(work, { recursive: true, force: true });
}
main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });

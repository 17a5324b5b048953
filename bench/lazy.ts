/**
 * `npm run bench` (and `node dist/bench/lazy.js`): restore --lazy against
 * the eager restore of the same image, at 64 MiB, 256 MiB and 1 GiB
 * (BENCH_LAZY_MIB to change), as ratios measured in the same run:
 *   running   restore() called -> it returns with the process running
 *   answered  restore() called -> the process answers a request that reads
 *             one word of each of 64 pages spread over its memory (the
 *             first useful work; lazily these pages are faults)
 *   filled    lazy only: restore() called -> the pager has every page in
 * Each is the median (and the best) of REPS runs after a warm-up; the image
 * is on tmpfs. The load average is printed with the figures: on a shared
 * machine time to running is mostly waiting for a CPU (each ptrace stop
 * wakes the task and tsnap), so the best run says what the restore itself
 * costs, and tsnap's own CPU time per restore is printed too.
 */
import { LAZY_FIXTURE } from './lazy-fixture.js';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync, openSync, closeSync, writeSync, fstatSync, readSync, constants } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dump } from '../src/dump/dump.js';
import { restore } from '../src/restore/restore.js';
import { ptrace, kill, setCloexec } from '../src/sys/index.js';

const SIZES = (process.env.BENCH_LAZY_MIB ?? '64,256,1024').split(',').map(Number);
const REPS = Number(process.env.BENCH_REPS ?? 3);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';
/** BENCH_AB=NAME: each lazy run is made twice, with NAME=0 and NAME=1 (a switch read per restore), the second reported apart. */
const AB = process.env.BENCH_AB;


function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

interface Run { running: number; answered: number; filled: number; cpu: number }

async function main(): Promise<void> {
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-lazy-'));
  const src = join(work, 'touch.c');
  const bin = join(work, 'touch');
  writeFileSync(src, LAZY_FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, src]);
  const fifo = join(work, 'in');
  execFileSync('mkfifo', [fifo]);
  const out = join(work, 'out');
  // Opened read-write, the FIFO never blocks the restore's open nor reaches EOF.
  const inFd = openSync(fifo, constants.O_RDWR);
  console.log(`restore --lazy vs eager restore (same image on tmpfs, medians of ${REPS}; ratios lazy/eager) [load ${loadavg().map((x) => x.toFixed(1)).join(' ')}]`);
  try {
    for (const mib of SIZES) {
      const child = spawn(bin, [String(mib)], { stdio: ['pipe', 'pipe', 'inherit'] });
      await new Promise((resolve) => createInterface({ input: child.stdout! }).once('line', resolve));
      const dir = join(OUT_ROOT, `tsnap-bench-lazy-${child.pid}`);
      rmSync(dir, { recursive: true, force: true });
      await dump({ pid: child.pid!, dir });
      await new Promise((resolve) => child.once('exit', resolve));

      const once = async (lazy: boolean): Promise<Run> => {
        writeFileSync(out, '');
        (globalThis as { gc?: () => void }).gc?.();
        const c0 = process.cpuUsage();
        const t0 = process.hrtime.bigint();
        const r = await restore({ dir, newPid: true, stdin: fifo, stdout: out, check: 'warn', lazy: lazy ? { detach: false } : undefined });
        const running = ms(t0);
        const c = process.cpuUsage(c0);
        const cpu = (c.user + c.system) / 1000;
        writeSync(inFd, 'x');
        const outFd = openSync(out, 'r');
        while (fstatSync(outFd).size === 0) await new Promise((resolve) => setImmediate(resolve));
        const answered = ms(t0);
        const b = Buffer.alloc(8);
        readSync(outFd, b, 0, 8, 0);
        closeSync(outFd);
        let filled = 0;
        if (r.lazy) {
          await r.lazy.finish();
          filled = ms(t0);
        }
        kill(r.pid, 9);
        try { ptrace.waitpidBlocking(r.pid); } catch { /* reaped */ }
        return { running, answered, filled, cpu };
      };
      // Warm-up: each path once.
      await once(false);
      await once(true);
      const eager: Run[] = [];
      const lazy: Run[] = [];
      const lazyB: Run[] = [];
      for (let i = 0; i < REPS; i++) {
        eager.push(await once(false));
        if (AB) process.env[AB] = '0';
        lazy.push(await once(true));
        if (!AB) continue;
        process.env[AB] = '1';
        lazyB.push(await once(true));
      }
      const m = (rs: Run[], k: keyof Run) => median(rs.map((r) => r[k]));
      const best = (rs: Run[], k: keyof Run) => Math.min(...rs.map((r) => r[k]));
      const er = m(eager, 'running');
      const lr = m(lazy, 'running');
      const ea = m(eager, 'answered');
      const la = m(lazy, 'answered');
      console.log(`${String(mib).padStart(5)} MiB  running: eager ${er.toFixed(1)} ms, lazy ${lr.toFixed(1)} ms (${(lr / er).toFixed(3)}), best ${best(eager, 'running').toFixed(1)} / ${best(lazy, 'running').toFixed(1)} ms`
        + `  answered: eager ${ea.toFixed(1)} ms, lazy ${la.toFixed(1)} ms (${(la / ea).toFixed(3)})`
        + `  lazy filled: ${m(lazy, 'filled').toFixed(1)} ms (${(m(lazy, 'filled') / er).toFixed(2)} x eager running)`
        + `  tsnap CPU to running: eager ${m(eager, 'cpu').toFixed(1)} ms, lazy ${m(lazy, 'cpu').toFixed(1)} ms`
        + `  [load ${loadavg().map((x) => x.toFixed(1)).join(' ')}]`);
      if (AB) {
        console.log(`${' '.repeat(11)}${AB}=0: running ${lr.toFixed(1)} ms (best ${best(lazy, 'running').toFixed(1)}), answered ${la.toFixed(1)} ms (best ${best(lazy, 'answered').toFixed(1)})`
          + ` | ${AB}=1: running ${m(lazyB, 'running').toFixed(1)} ms (best ${best(lazyB, 'running').toFixed(1)}), answered ${m(lazyB, 'answered').toFixed(1)} ms (best ${best(lazyB, 'answered').toFixed(1)})`);
      }
      rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    closeSync(inFd);
    rmSync(work, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });

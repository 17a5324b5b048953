/**
 * `node dist/bench/helper-start.js`: how long the restore helper takes to
 * start (its program loaded, posix_spawn'ed, the program let go, the helper
 * asleep in pause()), on the critical path of every restore, eager or lazy.
 * Three ways, interleaved run by run so that the machine's load weighs on
 * each alike:
 *   memfd    loadProgram(), what restore does (a memfd, exec'd through /proc/PID/fd/N)
 *   tmpfile  loadProgram() with TSNAP_PROGRAM_MEMFD=0 (the O_TMPFILE fallback)
 *   named    the way before (until 228e977): a file in a mkdtemp directory of
 *            /dev/shm, unlinked with its directory once the helper has exec'd;
 *            re-created here, since the code no longer has it
 * BENCH_REPS runs of each (default 200): median and 10th percentile, in µs.
 */
import { mkdtempSync, writeFileSync, unlinkSync, rmdirSync, openSync, closeSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadavg } from 'node:os';
import { loadProgram, helperElf, HELPER_NAME } from '../src/inject/tiny-elf.js';
import { posixSpawnAsync, kill, SIGKILL, ptrace } from '../src/sys/index.js';

const REPS = Number(process.env.BENCH_REPS ?? 200);

type Load = () => { path: string; remove: () => void };

function named(): { path: string; remove: () => void } {
  const dir = mkdtempSync(join('/dev/shm', 'tsnap-'));
  const path = join(dir, HELPER_NAME);
  writeFileSync(path, helperElf(), { mode: 0o700 });
  return { path, remove: () => { unlinkSync(path); rmdirSync(dir); } };
}

const ways: [string, Load][] = [
  ['memfd', () => loadProgram(HELPER_NAME, helperElf())],
  ['tmpfile', () => {
    process.env.TSNAP_PROGRAM_MEMFD = '0';
    try { return loadProgram(HELPER_NAME, helperElf()); } finally { delete process.env.TSNAP_PROGRAM_MEMFD; }
  }],
  ['named', named],
];

async function once(load: Load, devNull: number): Promise<number> {
  const t0 = process.hrtime.bigint();
  const prog = load();
  let pid: number;
  try {
    pid = await posixSpawnAsync(prog.path, [], [devNull, devNull, devNull], false);
  } finally {
    prog.remove();
  }
  try {
    for (;;) {
      try { if (readFileSync(`/proc/${pid}/syscall`, 'utf8').startsWith('34 ')) break; } catch { /* not yet */ }
      await new Promise((r) => setImmediate(r));
    }
    return Number(process.hrtime.bigint() - t0) / 1e3;
  } finally {
    try { kill(pid, SIGKILL); } catch { /* gone */ }
    ptrace.waitpidBlocking(pid);
  }
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * p))];
}

async function main(): Promise<void> {
  const devNull = openSync('/dev/null', 'r+');
  const times = new Map<string, number[]>(ways.map(([n]) => [n, []]));
  try {
    for (const [, load] of ways) await once(load, devNull); // warm-up
    for (let i = 0; i < REPS; i++) {
      // A different order each round: none always runs right after another.
      const order = i % 2 ? [...ways].reverse() : ways;
      for (const [n, load] of order) times.get(n)!.push(await once(load, devNull));
    }
  } finally {
    closeSync(devNull);
  }
  const base = pct(times.get('named')!, 0.5);
  console.log(`restore helper start, load -> in pause(), ${REPS} interleaved runs each [load ${loadavg().map((x) => x.toFixed(1)).join(' ')}]`);
  for (const [n] of ways) {
    const t = times.get(n)!;
    console.log(`  ${n.padEnd(8)} median ${pct(t, 0.5).toFixed(0).padStart(5)} µs  p10 ${pct(t, 0.1).toFixed(0).padStart(5)} µs  (median ${(pct(t, 0.5) / base).toFixed(2)} x named)`);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});

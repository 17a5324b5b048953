/**
 * A restore SIGKILLed at a random instant (eager and --lazy): all or
 * nothing. Every process the restore made carries a marker in its
 * environment (the image's, and tsnap's own for its helpers), so whatever
 * is left afterwards is found however it was reparented. Afterwards
 * either nothing of the restore is alive, or exactly one process is: the
 * restored one, running (not stopped, not traced), and its own check of
 * every page passes. A helper, a stopped half-built process or a process
 * with wrong memory is a failure.
 *
 * TSNAP_RESTORE_KILL_TRIALS=N runs more (default 16: 8 eager, 8 lazy).
 */
import { describe, it, expect, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, TSNAP_BIN, killPid } from './helpers/tsnap.js';
import { registerPid } from './helpers/processes.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const TRIALS = Number(process.env.TSNAP_RESTORE_KILL_TRIALS ?? 16);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Live processes whose environment holds `mark`. */
function marked(mark: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      if (!readFileSync(`/proc/${name}/environ`).includes(mark)) continue;
      if (/^State:\s+Z/m.test(readFileSync(`/proc/${name}/status`, 'utf8'))) continue;
      out.push(Number(name));
    } catch { /* gone, or a kernel thread */ }
  }
  return out;
}

/** SIGKILL is pending for one of its threads: it is on its way out. */
function dying(pid: number): boolean {
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const st = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
      for (const m of st.matchAll(/^(?:SigPnd|ShdPnd):\s*([0-9a-f]+)/gm)) if ((BigInt(`0x${m[1]}`) & 0x100n) !== 0n) return true;
    }
  } catch { /* gone */ }
  return false;
}

/** State and tracer of a live process; null once it is gone or a zombie. */
function stateOf(pid: number): { state: string; tracer: number } | null {
  let s: string;
  try { s = readFileSync(`/proc/${pid}/status`, 'utf8'); } catch { return null; }
  const state = /^State:\s+(\S)/m.exec(s)![1];
  return state === 'Z' || state === 'X' ? null : { state, tracer: Number(/^TracerPid:\s+(\d+)/m.exec(s)![1]) };
}

describe('a restore SIGKILLed at a random instant', () => {
  it(`leaves nothing, or the whole process running and passing its own check (${TRIALS} trials, eager and lazy)`, async () => {
    const work = tmpDir('tsnap-krestore-');
    const mark = `TSNAP_KR_MARK=${process.pid}-${Date.now()}`;
    const [key, value] = mark.split('=');
    const p = await startProcess(await compileC('migrant'), ['8'], { env: { [key]: value }, stdin: 'ignore' });
    await p.waitForLine(/^count=20$/, 10_000);
    const img = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', img);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;

    // One restore of each kind, not killed, sets the range of instants: the whole restore, start to exit.
    const span: Record<string, number> = {};
    for (const lazy of [false, true]) {
      const t0 = Date.now();
      const r = await tsnap('restore', '--dir', img, '--new-pid', '--detach', '--stdout', join(work, 'out-span'), '--stderr', join(work, 'err-span'), ...(lazy ? ['--lazy', '--lazy-log', join(work, 'lazy-span.log')] : []));
      expect(r.code, r.stderr).toBe(0);
      span[String(lazy)] = Date.now() - t0;
      for (const q of marked(mark)) await killPid(q);
    }

    const outcomes: string[] = [];
    for (let i = 0; i < TRIALS; i++) {
      const lazy = i % 2 === 1;
      const out = join(work, `out-${i}`);
      const args = ['restore', '--dir', img, '--new-pid', '--detach', '--stdout', out, '--stderr', `${out}.err`, ...(lazy ? ['--lazy', '--lazy-log', join(work, `lazy-${i}.log`)] : [])];
      const started = Date.now();
      const child = spawn(process.execPath, [TSNAP_BIN, ...args], { stdio: 'ignore', env: { ...process.env, [key]: value } });
      const exited = new Promise<{ code: number | null; signal: string | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })));
      // Most of the first third is Node starting: the instants that matter are later.
      const delay = Math.floor(span[String(lazy)] * (0.3 + 0.9 * Math.random()));
      const timer = setTimeout(() => { try { child.kill('SIGKILL'); } catch { /* exited */ } }, delay);
      const r = await exited;
      clearTimeout(timer);
      // A span measured during a burst of load would put every later kill
      // after the end: a restore that finished sets the span to its own time.
      if (r.signal !== 'SIGKILL') span[String(lazy)] = Math.min(span[String(lazy)], Date.now() - started);
      const what = `trial ${i} (${lazy ? 'lazy' : 'eager'}, kill at ${delay} ms, ${r.signal ?? `exit ${r.code}`})`;
      outcomes.push(r.signal === 'SIGKILL' ? 'killed' : `exit ${r.code}`);
      // What the kernel and the guard tear down takes a moment: a helper, a traced half-built process, a guard.
      let left = marked(mark);
      for (let k = 0; k < 300 && left.length > 1; k++) { await sleep(10); left = marked(mark); }
      await sleep(200);
      // One already SIGKILLed (a half-built process, by PTRACE_O_EXITKILL as
      // tsnap died) is still tearing down on a loaded machine: wait for it.
      for (let k = 0; k < 500 && marked(mark).some(dying); k++) await sleep(10);
      left = marked(mark);
      for (const q of left) registerPid(q);
      expect(left.length, `${what}: left ${left.join(',')}`).toBeLessThanOrEqual(1);
      if (r.code === 0) expect(left.length, `${what}: the restore said it ran`).toBe(1);
      if (left.length === 1) {
        outcomes[i] += ' +1';
        const [q] = left;
        const gone = () => { try { return /^State:\s+Z/m.test(readFileSync(`/proc/${q}/status`, 'utf8')); } catch { return true; } };
        // A lazy one's guard may end it at any moment (its pager died): its /proc entry may go under our reads.
        const st = stateOf(q);
        if (st === null) expect(lazy, `${what}: ${q} vanished`).toBe(true);
        else {
          expect(st.tracer, `${what}: ${q} traced`).toBe(0);
          expect(st.state, `${what}: ${q} stopped`).not.toMatch(/[Tt]/);
        }
        // Its own word: every page holds its generation.
        try { process.kill(q, 'SIGUSR1'); } catch { /* ended by its guard meanwhile (lazy only, checked below) */ }
        const said = () => (existsSync(out) ? readFileSync(out, 'utf8') : '');
        for (let k = 0; k < 1000 && !/^(PASS|FAIL)/m.test(said()) && !gone(); k++) await sleep(10);
        const verdict = /^(PASS|FAIL).*$/m.exec(said())?.[0];
        const lazyLog = lazy && existsSync(join(work, `lazy-${i}.log`)) ? readFileSync(join(work, `lazy-${i}.log`), 'utf8').trim().split('\n').slice(-2).join(' | ') : '';
        // A lazy process whose pager was killed with tsnap would read zeros: its guard kills it instead (by design).
        if (verdict === undefined && lazy && gone()) outcomes[i] += ' (the guard killed it)';
        else expect(verdict, `${what}: the process left (${q}) says; ${lazyLog}`).toMatch(/^PASS/);
        await killPid(q);
      }
    }
    // The trials must really have killed restores midway, and let some finish.
    expect(outcomes.filter((o) => o === 'killed').length, outcomes.join(' ')).toBeGreaterThan(TRIALS / 4);
    if (process.env.TSNAP_RESTORE_KILL_LOG) console.log(outcomes.join(' '));
  }, 600_000);
});

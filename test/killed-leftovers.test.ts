/**
 * A tsnap SIGKILLed at any instant leaves no file behind (docs/reliability.md
 * section 8). Each tsnap here runs in a mount namespace of its own whose
 * /dev/shm is a private directory, with TMPDIR another: whatever it makes
 * in either is this test's alone to see, whatever the other test files
 * (or other people on the machine) do meanwhile.
 *
 * - the tiny programs (restore helper, tracking holder) have no name at all
 *   (memfd): a restore or pre-dump killed at any instant leaves nothing;
 * - a migration's staging and serve's warm-up image are directories named
 *   after their tsnap (pid and start time) and locked by it; a killed one
 *   leaves its directory, which the next migrate or serve removes (with the
 *   tracking its rounds started).
 *
 * Every target is a real C program, killed by pid at the end.
 */
import { describe, expect, it, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running } from './helpers/fixtures.js';
import { TSNAP_BIN } from './helpers/tsnap.js';
import { descendantsOf, registerPid, isGone, killPid, tracerOf, trackChild, trackRestored } from './helpers/processes.js';
import { findHolders } from '../src/track/untrack.js';
import { LineLog } from './helpers/lines.js';

useProcessCleanup();
const shmDirs: string[] = [];
afterAll(() => {
  cleanupTmpDirs();
  for (const d of shmDirs) rmSync(d, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A private /dev/shm (a directory of the real one: still a tmpfs allowing exec) and TMPDIR. */
function privateScratch(): { shm: string; tmp: string; list: () => string[] } {
  const shm = mkdtempSync('/dev/shm/leftovers-test-');
  shmDirs.push(shm);
  const tmp = tmpDir('leftovers-tmp-');
  const list = () => [...readdirSync(shm).map((n) => `shm/${n}`), ...readdirSync(tmp).map((n) => `tmp/${n}`)].sort();
  return { shm, tmp, list };
}

interface Tsnap { child: ChildProcess; stderr: () => string; exited: Promise<{ code: number | null; signal: string | null }> }

/** tsnap ARGS with /dev/shm and TMPDIR private (unshare -m execs sh, which execs node: child.pid is tsnap). */
function tsnapIn(s: { shm: string; tmp: string }, args: string[], env: Record<string, string> = {}): Tsnap {
  const child = spawn('unshare', ['-m', 'sh', '-c', 'mount --bind "$0" /dev/shm && exec "$@"', s.shm, process.execPath, TSNAP_BIN, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, TMPDIR: s.tmp, ...env },
  });
  trackChild(child);
  let err = '';
  child.stderr!.on('data', (d) => { err += d; });
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return { child, stderr: () => err, exited };
}

/** Waits until tsnap stopped itself at its TSNAP_TEST_PAUSE_AT point. */
async function pausedAt(t: Tsnap): Promise<void> {
  for (let i = 0; i < 4000; i++) {
    let st = '';
    try { st = readFileSync(`/proc/${t.child.pid}/status`, 'utf8'); } catch { break; }
    if (/^State:\s+T/m.test(st)) return;
    await sleep(5);
  }
  throw new Error(`tsnap ${t.child.pid} never reached its pause point: ${t.stderr()}`);
}

async function sigkill(t: Tsnap): Promise<void> {
  try { process.kill(t.child.pid!, 'SIGKILL'); } catch { /* exited */ }
  expect((await t.exited).signal).toBe('SIGKILL');
}

/** Running, not stopped, untraced (the guardian puts a frozen target back once tsnap is gone). */
async function runsAsBefore(p: Running): Promise<void> {
  const state = () => /^State:\s+(\S)/m.exec(readFileSync(`/proc/${p.pid}/status`, 'utf8'))![1];
  for (let i = 0; i < 1000 && (tracerOf(p.pid) !== 0 || /[Tt]/.test(state())); i++) await sleep(10);
  expect([tracerOf(p.pid), state()]).toEqual([0, expect.not.stringMatching(/[TtZX]/)]);
  // Still counting: its next line comes.
  const from = p.lines().length;
  await p.waitForLine(/count=/, 5000, from);
}

/** Live processes (other than `except`) whose environment holds `mark`: what a restore made. */
function marked(mark: string, except: number[]): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || except.includes(Number(name))) continue;
    try { if (readFileSync(`/proc/${name}/environ`).includes(mark) && !isGone(Number(name))) out.push(Number(name)); } catch { /* gone */ }
  }
  return out;
}

async function counter(mark = ''): Promise<Running> {
  return startProcess(await compileC('counter'), [], mark ? { env: { LEFTOVERS_MARK: mark } } : {});
}

describe('a tsnap SIGKILLed mid-way leaves no file behind', () => {
  it('dump and pre-dump killed at their named points: nothing left, the target runs on', async () => {
    const s = privateScratch();
    const p = await counter();
    const img = tmpDir('leftovers-img-');
    const cases: [string[], string][] = [
      [['dump', '--pid', String(p.pid), '--dir', join(img, 'a'), '--leave-running'], 'dump-frozen'],
      [['pre-dump', '--pid', String(p.pid), '--dir', join(img, 'b')], 'holder-started'],
      [['dump', '--pid', String(p.pid), '--dir', join(img, 'c'), '--leave-running', '--cow'], 'cow-running'],
    ];
    for (const [args, point] of cases) {
      const t = tsnapIn(s, args, { TSNAP_TEST_PAUSE_AT: point });
      await pausedAt(t);
      await sigkill(t);
      await runsAsBefore(p);
      expect(s.list(), point).toEqual([]);
    }
    // The killed pre-dump's holder went with it (it had committed no image).
    for (let i = 0; i < 200 && findHolders(p.pid).length; i++) await sleep(10);
    expect(findHolders(p.pid)).toEqual([]);
    await p.kill();
  });

  it('restore (eager and --lazy) killed at named points and random instants: nothing left, nothing of it running', async () => {
    const s = privateScratch();
    const mark = `m${randomBytes(6).toString('hex')}`;
    const p = await counter(mark);
    const img = join(tmpDir('leftovers-img-'), 'img');
    const d = tsnapIn(s, ['dump', '--pid', String(p.pid), '--dir', img, '--leave-running']);
    expect(await d.exited, d.stderr()).toEqual({ code: 0, signal: null });
    const trials: { lazy: boolean; point?: string; delayMs?: number }[] = [
      // The helper program loaded, not yet started: it used to be a file in /dev/shm here.
      { lazy: false, point: 'restore-program-loaded' },
      { lazy: true, point: 'restore-program-loaded' },
      { lazy: false, point: 'restore-helper-spawned' },
      { lazy: false, point: 'restore-cloned' },
      { lazy: true, point: 'restore-helper-seized' },
      ...[0, 1, 2, 3, 4, 5].map((i) => ({ lazy: i % 2 === 1, delayMs: 80 + Math.floor(Math.random() * 300) })),
    ];
    for (const tr of trials) {
      const what = JSON.stringify(tr);
      const t = tsnapIn(s, ['restore', '--dir', img, '--new-pid', '--detach', ...(tr.lazy ? ['--lazy'] : [])], tr.point ? { TSNAP_TEST_PAUSE_AT: tr.point } : {});
      if (tr.point) await pausedAt(t);
      else await sleep(tr.delayMs!);
      try { process.kill(t.child.pid!, 'SIGKILL'); } catch { /* done already */ }
      await t.exited;
      // A restore that had finished runs (and, lazy, its pager): ended by pid; one cut short left no process.
      await sleep(100);
      for (const pid of marked(mark, [p.pid])) { registerPid(pid); trackRestored(pid); await killPid(pid); }
      if (tr.point) expect(marked(mark, [p.pid]), what).toEqual([]);
      expect(s.list(), what).toEqual([]);
    }
    await p.kill();
  });

  it('a killed migrate leaves its staging, locked by nobody: the next migrate removes it and ends its tracking', async () => {
    const s = privateScratch();
    const recv = tmpDir('leftovers-recv-');
    const token = join(tmpDir('leftovers-tok-'), 'token');
    writeFileSync(token, 'sesame\n', { mode: 0o600 });
    const serve = tsnapIn(s, ['serve', '--listen', '127.0.0.1:0', '--dir', recv, '--token-file', token, '--json', '--no-warm-up']);
    const log = new LineLog('tsnap serve', () => serve.stderr()).follow(serve.child.stderr!);
    const port = (JSON.parse(await log.waitFor(/"listening"/, 30_000, 0, 'its "listening" event')) as { port: number }).port;

    const first = await counter();
    const m1 = tsnapIn(s, ['migrate', '--pid', String(first.pid), '--to', `127.0.0.1:${port}`, '--token-file', token, '--max-iterations', '3'], { TSNAP_TEST_PAUSE_AT: 'migrate-first-iteration-sent' });
    await pausedAt(m1);
    await sigkill(m1);
    await runsAsBefore(first);
    // Its staging is there (it is the sweep that removes it), named after the killed tsnap.
    const staged = s.list();
    expect(staged).toEqual([expect.stringMatching(new RegExp(`^shm/tsnap-migrate-${m1.child.pid}\\.\\d+-\\w{6}$`))]);
    // Its rounds were committed: their holder outlives the killed tsnap until the sweep.
    expect(findHolders(first.pid).length).toBe(1);

    const second = await counter();
    const m2 = tsnapIn(s, ['migrate', '--pid', String(second.pid), '--to', `127.0.0.1:${port}`, '--token-file', token]);
    const r = await m2.exited;
    expect(r, m2.stderr()).toEqual({ code: 0, signal: null });
    // Restored on the receiver (the source is killed after the commit): ended by pid.
    for (const pid of descendantsOf(serve.child.pid!)) { registerPid(pid); trackRestored(pid); }
    expect(s.list()).toEqual([]);
    for (let i = 0; i < 200 && findHolders(first.pid).length; i++) await sleep(10);
    expect(findHolders(first.pid)).toEqual([]);
    // The first source never noticed.
    await runsAsBefore(first);
    await first.kill();
    await sigkill(serve);
  });

  it('a serve killed in its warm-up leaves its image, which the next serve removes', async () => {
    const s = privateScratch();
    const recv = tmpDir('leftovers-recv-');
    const token = join(tmpDir('leftovers-tok-'), 'token');
    writeFileSync(token, 'sesame\n', { mode: 0o600 });
    const args = ['serve', '--listen', '127.0.0.1:0', '--dir', recv, '--token-file', token, '--json', '--restore'];
    const s1 = tsnapIn(s, args, { TSNAP_TEST_PAUSE_AT: 'serve-warm-up-dumped' });
    await pausedAt(s1);
    // The warm-up's sleep (its own session, no marker): ended by pid.
    const kids = descendantsOf(s1.child.pid!);
    for (const pid of kids) registerPid(pid);
    await sigkill(s1);
    for (const pid of kids) await killPid(pid);
    expect(s.list()).toEqual([expect.stringMatching(new RegExp(`^shm/tsnap-warm-up-${s1.child.pid}\\.\\d+-\\w{6}$`))]);

    const s2 = tsnapIn(s, args);
    const log = new LineLog('tsnap serve', () => s2.stderr()).follow(s2.child.stderr!);
    await log.waitFor(/"listening"/, 30_000, 0, 'its "listening" event');
    expect(s.list()).toEqual([]);
    await sigkill(s2);
  });

  it('a killed migrate\'s staging swept by the next serve --restore (its warm-up) ends its tracking too', async () => {
    const s = privateScratch();
    const token = join(tmpDir('leftovers-tok-'), 'token');
    writeFileSync(token, 'sesame\n', { mode: 0o600 });
    const recv = tsnapIn(s, ['serve', '--listen', '127.0.0.1:0', '--dir', tmpDir('leftovers-recv-'), '--token-file', token, '--json', '--no-warm-up']);
    const log = new LineLog('tsnap serve', () => recv.stderr()).follow(recv.child.stderr!);
    const port = (JSON.parse(await log.waitFor(/"listening"/, 30_000, 0, 'its "listening" event')) as { port: number }).port;
    const p = await counter();
    const m = tsnapIn(s, ['migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${port}`, '--token-file', token, '--max-iterations', '3'], { TSNAP_TEST_PAUSE_AT: 'migrate-first-iteration-sent' });
    await pausedAt(m);
    await sigkill(m);
    await sigkill(recv);
    await runsAsBefore(p);
    expect(s.list().length).toBe(1);
    expect(findHolders(p.pid).length).toBe(1);
    const next = tsnapIn(s, ['serve', '--listen', '127.0.0.1:0', '--dir', tmpDir('leftovers-recv-'), '--token-file', token, '--json', '--restore']);
    const log2 = new LineLog('tsnap serve', () => next.stderr()).follow(next.child.stderr!);
    await log2.waitFor(/"listening"/, 30_000, 0, 'its "listening" event');
    expect(s.list()).toEqual([]);
    for (let i = 0; i < 200 && findHolders(p.pid).length; i++) await sleep(10);
    expect(findHolders(p.pid)).toEqual([]);
    await runsAsBefore(p);
    await p.kill();
    await sigkill(next);
  });

  it('the fallback where memfds may not be executed (O_TMPFILE) restores and leaves nothing either', async () => {
    const s = privateScratch();
    const p = await counter();
    const img = join(tmpDir('leftovers-img-'), 'img');
    const env = { TSNAP_PROGRAM_MEMFD: '0' };
    const pre = tsnapIn(s, ['pre-dump', '--pid', String(p.pid), '--dir', `${img}1`], env);
    expect(await pre.exited, pre.stderr()).toEqual({ code: 0, signal: null });
    expect(findHolders(p.pid).length).toBe(1);
    const d = tsnapIn(s, ['dump', '--pid', String(p.pid), '--dir', img, '--parent', `${img}1`], env);
    expect(await d.exited, d.stderr()).toEqual({ code: 0, signal: null });
    await p.exited;
    const pidfile = join(tmpDir('leftovers-pid-'), 'pid');
    const t = tsnapIn(s, ['restore', '--dir', img, '--detach', '--pidfile', pidfile], env);
    expect(await t.exited, t.stderr()).toEqual({ code: 0, signal: null });
    const pid = Number(readFileSync(pidfile, 'utf8'));
    registerPid(pid);
    trackRestored(pid);
    expect(isGone(pid)).toBe(false);
    expect(s.list()).toEqual([]);
    await killPid(pid);
  });
});

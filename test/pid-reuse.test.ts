/**
 * Chains of rounds address their process by pid: dump --pre-dumps, pre-dump
 * then dump --parent, migrate. Between two rounds the process may exit and
 * its pid go to another process (pid_max is 32768 here). The next round
 * must refuse (exit 3, one line) instead of dumping that stranger into the
 * chain, stopping it to inject a tracking, or killing it in kill mode.
 *
 * Each test: a first round of a real process, the process killed, its pid
 * given to `sleep 300` (clone3 set_tid, helpers/take-pid.ts), then the next
 * round; the stranger must still sleep, untraced, untracked, undumped.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, startTsnap } from './helpers/tsnap.js';
import { killPid, tracerOf } from './helpers/processes.js';
import { takePid } from './helpers/take-pid.js';
import { startServe } from './helpers/serve.js';
import { findHolders } from '../src/track/untrack.js';
import { readMetaFile } from '../src/image/metadata.js';
import { FileKind, type Inventory } from '../formats/schema.js';
import { readStat } from '../src/proc/index.js';
import { eventually } from './helpers/eventually.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

/** What tsnap said, without the pause point's own line. */
function said(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l && !l.startsWith('tsnap: paused at') && !l.startsWith('{'));
}

/** Refused as a chain of another process: exit 3 and one line of tsnap's, matching `message`. */
function expectRefused(r: { code: number | null; stderr: string }, message: RegExp): void {
  expect(r.code, r.stderr).toBe(3);
  const lines = said(r.stderr);
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(message);
}

/** How often the process has been woken: a `sleep` inside its one nanosleep is woken by nothing but a stop, a signal or a trace. */
function wakeups(pid: number): number {
  return Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

/** The stranger once it sleeps in its nanosleep (syscall 230), and how often it had been woken then. */
async function asleep(pid: number): Promise<{ startTime: number; woken: number }> {
  await eventually(() => readFileSync(`/proc/${pid}/syscall`, 'utf8'), (s) => s.startsWith('230 '), 15_000, `process ${pid} in nanosleep`);
  return { startTime: readStat(pid).startTime, woken: wakeups(pid) };
}

/** The stranger was left alone: the same sleep, never woken (so never stopped or traced), with no tracking of tsnap's. */
function expectLeftAlone(stranger: number, was: { startTime: number; woken: number }): void {
  const startTime = was.startTime;
  expect(wakeups(stranger), 'the stranger was never woken (stopped, traced, signalled)').toBe(was.woken);
  expect(readStat(stranger).startTime, 'the stranger is the same process').toBe(startTime);
  expect(readFileSync(`/proc/${stranger}/cmdline`, 'utf8').split('\0')[0]).toBe('sleep');
  expect(readFileSync(`/proc/${stranger}/status`, 'utf8')).toMatch(/^State:\s+S/m);
  expect(tracerOf(stranger)).toBe(0);
  expect(findHolders(stranger), 'a tracking of the stranger').toEqual([]);
}

function waitForStderr(child: { stderr: NodeJS.ReadableStream | null }, re: RegExp): Promise<void> {
  return new Promise((resolve, reject) => {
    let text = '';
    const t = setTimeout(() => reject(new Error(`timeout waiting for ${re} on tsnap's stderr: ${text}`)), 60_000);
    child.stderr!.on('data', (d) => { text += d; if (re.test(text)) { clearTimeout(t); resolve(); } });
  });
}

async function waitStopped(pid: number): Promise<void> {
  while (!/^State:\s+T/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))) await new Promise((r) => setTimeout(r, 5));
}

/**
 * Runs `args` (with PID in them replaced) paused at `at`; there, the target
 * is killed and its pid given to a stranger; then tsnap goes on. Returns
 * tsnap's result and the stranger (still alive: the caller checks and kills it).
 */
async function reuseAt(args: string[], at: string): Promise<{ code: number | null; stderr: string; pid: number; stranger: number; strangerStart: { startTime: number; woken: number } }> {
  const p = await startProcess(await compileC('migrant'), ['8']);
  await p.waitForLine(/^count=\d+$/, 10_000);
  const t = startTsnap(args.map((a) => (a === 'PID' ? String(p.pid) : a)), { TSNAP_TEST_PAUSE_AT: at });
  await waitForStderr(t.child, new RegExp(`paused at ${at}`));
  await waitStopped(t.child.pid!);
  const pid = p.pid;
  await p.kill();
  const stranger = await takePid(pid);
  const strangerStart = await asleep(stranger);
  t.child.kill('SIGCONT');
  const r = await t.done;
  return { code: r.code, stderr: r.stderr, pid, stranger, strangerStart };
}

describe('a pid reused between the rounds of a chain', () => {
  for (const preDumps of ['1', '2']) {
    it(`dump --pre-dumps ${preDumps}: the round after the first refuses the stranger (exit 3); no round is kept, the stranger is neither tracked nor killed`, async () => {
      const work = tmpDir('tsnap-reuse-');
      const dir = join(work, 'img');
      // Kill mode: a final dump that took the stranger would kill it.
      const r = await reuseAt(['dump', '--pid', 'PID', '--dir', dir, '--pre-dumps', preDumps], 'loop-first-round-done');
      try {
        expectRefused(r, new RegExp(`process ${r.pid} exited during its pre-dump loop; .*left alone`));
        expect(existsSync(dir) ? readdirSync(dir) : []).toEqual([]);
        await new Promise((res) => setTimeout(res, 100));
        expectLeftAlone(r.stranger, r.strangerStart);
      } finally {
        await killPid(r.stranger);
      }
    });
  }

  it('dump --tree --pre-dumps 1: the final round refuses the stranger that took the root\'s pid (exit 3)', async () => {
    const work = tmpDir('tsnap-reuse-');
    const dir = join(work, 'img');
    const r = await reuseAt(['dump', '--tree', '--pid', 'PID', '--dir', dir, '--pre-dumps', '1'], 'loop-first-round-done');
    try {
      expectRefused(r, new RegExp(`process ${r.pid} exited during its pre-dump loop; .*left alone`));
      expect(existsSync(dir) ? readdirSync(dir) : []).toEqual([]);
      await new Promise((res) => setTimeout(res, 100));
      expectLeftAlone(r.stranger, r.strangerStart);
    } finally {
      await killPid(r.stranger);
    }
  });

  it('one pre-dump whose process exits mid-round and whose pid is taken before the scan: not committed (exit 3), the stranger untouched', async () => {
    const work = tmpDir('tsnap-reuse-');
    const dir = join(work, 'pre');
    const r = await reuseAt(['pre-dump', '--pid', 'PID', '--dir', dir], 'before-scan');
    try {
      // The round's fds of its process (pagemap, mem) fail first, or its last check before the inventory does.
      expectRefused(r, new RegExp(`process ${r.pid}(: the process is gone| exited while it was pre-dumped; no image was written)`));
      expect(existsSync(join(dir, 'inventory'))).toBe(false);
      await new Promise((res) => setTimeout(res, 100));
      expectLeftAlone(r.stranger, r.strangerStart);
    } finally {
      await killPid(r.stranger);
    }
  });

  it('pre-dump, then dump --parent in another run: the parent image names another process of that pid; refused (exit 3) before anything is done to it', async () => {
    const work = tmpDir('tsnap-reuse-');
    const p = await startProcess(await compileC('migrant'), ['8']);
    await p.waitForLine(/^count=\d+$/, 10_000);
    const pre = join(work, 'pre');
    const r1 = await tsnap('pre-dump', '--pid', String(p.pid), '--dir', pre);
    expect(r1.code, r1.stderr).toBe(0);
    const inv = readMetaFile<Inventory>(pre, FileKind.Inventory);
    // The process's identity, in the image (formats/image-v1.md, inventory).
    expect(inv.startTime).toBe(readStat(p.pid).startTime);
    const pid = p.pid;
    await p.kill();
    const stranger = await takePid(pid);
    const strangerStart = await asleep(stranger);
    try {
      for (const cmd of ['dump', 'pre-dump']) {
        const fin = join(work, cmd);
        const r = await tsnap(cmd, '--pid', String(pid), '--dir', fin, '--parent', pre);
        expectRefused(r, new RegExp(`parent image ${pre} is of process ${pid} started at tick ${inv.startTime}, which has exited: pid ${pid} is now another process \\(started at tick ${strangerStart.startTime}\\)`));
        expect(existsSync(join(fin, 'inventory'))).toBe(false);
        expectLeftAlone(stranger, strangerStart);
      }
    } finally {
      await killPid(stranger);
    }
  });

  it('pre-dump --tree, then dump --tree --parent: the root\'s pid now another process; refused (exit 3) before the tree is frozen', async () => {
    const work = tmpDir('tsnap-reuse-');
    const p = await startProcess(await compileC('migrant'), ['8']);
    await p.waitForLine(/^count=\d+$/, 10_000);
    const pre = join(work, 'pre');
    const r1 = await tsnap('pre-dump', '--tree', '--pid', String(p.pid), '--dir', pre);
    expect(r1.code, r1.stderr).toBe(0);
    const pid = p.pid;
    await p.kill();
    const stranger = await takePid(pid);
    const was = await asleep(stranger);
    try {
      const fin = join(work, 'fin');
      const r = await tsnap('dump', '--tree', '--pid', String(pid), '--dir', fin, '--parent', pre);
      expectRefused(r, new RegExp(`parent image ${join(pre, String(pid))} is of process ${pid} started at tick \\d+, which has exited: pid ${pid} is now another process`));
      expect(existsSync(join(fin, 'tree'))).toBe(false);
      expectLeftAlone(stranger, was);
    } finally {
      await killPid(stranger);
    }
  });

  it('migrate: the iteration after the first refuses the stranger (exit 3); the receiver commits nothing, the stranger is left alone', async () => {
    const work = tmpDir('tsnap-reuse-');
    const srv = await startServe(join(work, 'in'));
    const r = await reuseAt(['migrate', '--pid', 'PID', '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--max-iterations', '3', '--json'], 'migrate-first-iteration-sent');
    try {
      expectRefused(r, new RegExp(`process ${r.pid} exited during its migration; .*left alone; nothing was committed`));
      await new Promise((res) => setTimeout(res, 100));
      expectLeftAlone(r.stranger, r.strangerStart);
      expect(srv.events.join('\n')).not.toMatch(/"committed"/);
      expect(srv.proc.exitCode, 'serve goes on').toBe(null);
    } finally {
      await killPid(r.stranger);
    }
  });
});

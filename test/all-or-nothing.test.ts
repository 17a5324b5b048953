/**
 * All or nothing, at any instant and on any failure. tsnap is stopped at a named point
 * (TSNAP_TEST_PAUSE_AT, src/fault-points.ts) and signalled exactly there:
 * a dump interrupted by SIGINT/SIGTERM/SIGHUP lets every process go, leaves
 * no image and exits 128 + signo; a kill-mode tree dump kills every process
 * or none; a restore killed at any step leaves no helper, no half-built
 * process and nobody holding tsnap's stdout/stderr.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { existsSync, readFileSync, readdirSync, rmSync, openSync, writeSync, closeSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { spawn, execFileSync } from 'node:child_process';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running } from './helpers/fixtures.js';
import { tsnap, startTsnap, restoreDetached } from './helpers/tsnap.js';
import { isGone, tracerOf, tracerFor, registerPid, descendantsOf, killPid, waitPidsFree } from './helpers/processes.js';
import { eventually } from './helpers/eventually.js';
import { startServe } from './helpers/serve.js';
import { helperElf, loadProgram, HELPER_NAME } from '../src/inject/tiny-elf.js';
import { findHolders } from '../src/track/untrack.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until tsnap has stopped itself at its pause point. */
/** Writes `path` until the filesystem under it has only `leave` bytes free. */
function fillDisk(path: string, leave: number): void {
  const fd = openSync(path, 'w', 0o600);
  try {
    const block = Buffer.alloc(4096, 0x5a);
    for (;;) {
      const fs = statfsSync(path);
      if (fs.bavail * fs.bsize <= leave) return;
      writeSync(fd, block);
    }
  } finally {
    closeSync(fd);
  }
}

async function pausedAt(t: { child: { pid?: number }; done: Promise<{ stderr: string }> }): Promise<void> {
  const pid = t.child.pid!;
  for (let i = 0; i < 4000; i++) {
    let st = '';
    try { st = readFileSync(`/proc/${pid}/status`, 'utf8'); } catch { throw new Error(`tsnap ${pid} exited before its pause point: ${(await t.done).stderr}`); }
    if (/^State:\s+T/m.test(st)) return;
    await sleep(5);
  }
  throw new Error(`tsnap ${pid} never reached its pause point`);
}

async function allGone(pids: number[]): Promise<number[]> {
  for (let i = 0; i < 500 && pids.some((p) => !isGone(p)); i++) await sleep(10);
  return pids.filter((p) => !isGone(p));
}

async function treeStatus(p: Running): Promise<{ counter: number; last: number; bad: number }> {
  const from = p.lines().length;
  p.writeLine('status');
  // The parent answers between two writes into pipe A, which it may wait on
  // for child1 to drain a whole page of numbers (~0.5 s idle, more under load).
  const m = /counter=(\d+) last=(\d+) bad=(\d+)/.exec(await p.waitForLine(/^STATUS/, 15_000, from))!;
  return { counter: Number(m[1]), last: Number(m[2]), bad: Number(m[3]) };
}

async function startTree(): Promise<{ p: Running; all: number[] }> {
  const p = await startProcess(await compileC('tree'), []);
  return { p, all: [p.pid, Number(p.readyInfo.child1), Number(p.readyInfo.child2)] };
}

/** The tree runs on as before: untraced, and still checking itself. */
async function expectTreeRunsOn(p: Running, all: number[]): Promise<void> {
  for (const pid of all) {
    expect(isGone(pid), `process ${pid}`).toBe(false);
    expect(tracerOf(pid), `process ${pid}`).toBe(0);
  }
  const s1 = await treeStatus(p);
  // Waited for, not slept on: on a loaded machine 50 ms may pass without
  // the children getting the CPU; a tree left stopped never moves on.
  const s2 = await eventually(() => treeStatus(p), (s) => s.bad !== 0 || s.last > s1.last, 10_000, 'the tree passing numbers on');
  expect(s2.bad).toBe(0);
  expect(s2.last).toBeGreaterThan(s1.last);
}

describe('dump interrupted at a named point', () => {
  const cases: { point: string; sig: NodeJS.Signals; code: number }[] = [
    { point: 'tree-frozen', sig: 'SIGTERM', code: 143 },
    { point: 'tree-committed', sig: 'SIGINT', code: 130 },
  ];
  for (const { point, sig, code } of cases) {
    it(`dump --tree, ${sig} at ${point}: exit ${code}, no image, the whole tree resumed untraced`, async () => {
      const work = tmpDir('tsnap-intr-');
      const { p, all } = await startTree();
      const dir = join(work, 'img');
      const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--tree'], { TSNAP_TEST_PAUSE_AT: point });
      await pausedAt(t);
      // Stopped there, tsnap holds the whole tree.
      for (const pid of all) expect(tracerOf(pid), `process ${pid}`).toBe(tracerFor(t.child.pid!));
      process.kill(t.child.pid!, sig);
      process.kill(t.child.pid!, 'SIGCONT');
      const r = await t.done;
      expect(r.code, r.stderr).toBe(code);
      expect(r.stderr.trim().split('\n').filter((l) => !l.startsWith('tsnap: paused at'))).toHaveLength(1);
      expect(r.stderr).toMatch(new RegExp(`interrupted by ${sig}.*resumed`));
      expect(existsSync(dir)).toBe(false);
      await expectTreeRunsOn(p, all);
    });
  }

  it('dump of one process, SIGHUP right after the freeze: exit 129, no image, the process runs on', async () => {
    const work = tmpDir('tsnap-intr-');
    const p = await startProcess(await compileC('counter'), []);
    const dir = join(work, 'img');
    const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', dir], { TSNAP_TEST_PAUSE_AT: 'dump-frozen' });
    await pausedAt(t);
    expect(tracerOf(p.pid)).toBe(tracerFor(t.child.pid!));
    process.kill(t.child.pid!, 'SIGHUP');
    process.kill(t.child.pid!, 'SIGCONT');
    const r = await t.done;
    expect(r.code, r.stderr).toBe(129);
    expect(existsSync(dir)).toBe(false);
    expect(tracerOf(p.pid)).toBe(0);
    const from = p.lines().length;
    await p.waitForLine(/^count=/, 5000, from);
  });

  it('dump --pre-dumps, SIGTERM as a round commits: exit 143, no rounds left, no tracking left, the process runs on', async () => {
    const work = tmpDir('tsnap-intr-');
    const p = await startProcess(await compileC('counter'), []);
    const dir = join(work, 'loop');
    const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--pre-dumps', '3'], { TSNAP_TEST_PAUSE_AT: 'dump-committed' });
    await pausedAt(t);
    // The first round (a pre-dump) is written, and its tracking runs.
    expect(findHolders(p.pid).length).toBe(1);
    process.kill(t.child.pid!, 'SIGTERM');
    process.kill(t.child.pid!, 'SIGCONT');
    const r = await t.done;
    expect(r.code, r.stderr).toBe(143);
    expect(existsSync(dir)).toBe(false);
    expect(findHolders(p.pid)).toEqual([]);
    expect(tracerOf(p.pid)).toBe(0);
    await p.waitForLine(/^count=/, 5000, p.lines().length);
  });

  it('migrate, SIGTERM while the source is held frozen: exit 143, the receiver never commits, the source runs on untracked', async () => {
    const work = tmpDir('tsnap-intr-');
    // A port the kernel picks: a counted one may be another suite's (same token).
    const { port, proc: srv, events } = await startServe(join(work, 'in'));
    try {
      const p = await startProcess(await compileC('counter'), []);
      const t = startTsnap(['migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${port}`, '--token', 'sesame', '--max-iterations', '2'], { TSNAP_TEST_PAUSE_AT: 'migrate-held' });
      await pausedAt(t);
      expect(tracerOf(p.pid)).toBe(tracerFor(t.child.pid!));
      process.kill(t.child.pid!, 'SIGTERM');
      process.kill(t.child.pid!, 'SIGCONT');
      const r = await t.done;
      expect(r.code, r.stderr).toBe(143);
      expect(r.stderr).toMatch(/interrupted by SIGTERM/);
      expect(tracerOf(p.pid)).toBe(0);
      expect(findHolders(p.pid)).toEqual([]);
      await p.waitForLine(/^count=/, 5000, p.lines().length);
      expect(events.join('\n')).not.toMatch(/"committed"/);
    } finally {
      await killPid(srv.pid!);
    }
  });

  it('dump --tree onto a disk too small for the tree: exit 8, nothing killed, no image, the whole tree runs on', async () => {
    const { p, all } = await startTree();
    const mnt = tmpDir('tsnap-full-');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tsnap-test', mnt]);
    try {
      const r = await tsnap('dump', '--pid', String(p.pid), '--dir', join(mnt, 'img'), '--tree');
      expect(r.code, r.stderr).toBe(8);
      expect(r.stderr).toMatch(/no space left/);
      expect(readdirSync(mnt)).toEqual([]);
    } finally {
      execFileSync('umount', [mnt]);
    }
    await expectTreeRunsOn(p, all);
  });

  it('a failed dump --tree --parent leaves every tracking usable: the retry is a delta per process and restores', async () => {
    const work = tmpDir('tsnap-intr-');
    const { p, all } = await startTree();
    const pre = await tsnap('pre-dump', '--pid', String(p.pid), '--dir', join(work, 'pre'), '--tree');
    expect(pre.code, pre.stderr).toBe(0);
    const mnt = tmpDir('tsnap-full-');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tsnap-test', mnt]);
    try {
      // The disk fills while the tree is frozen, leaving room for a piece of
      // the images, not for all (a fixed small tmpfs sometimes held the
      // whole delta, which is as small as the tree's writes since the pre-dump).
      const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', join(mnt, 'img'), '--tree', '--parent', join(work, 'pre')], { TSNAP_TEST_PAUSE_AT: 'tree-frozen' });
      await pausedAt(t);
      fillDisk(join(mnt, 'filler'), 24 * 1024);
      process.kill(t.child.pid!, 'SIGCONT');
      const r = await t.done;
      expect(r.code, r.stderr).toBe(8);
      rmSync(join(mnt, 'filler'));
      expect(readdirSync(mnt)).toEqual([]);
    } finally {
      execFileSync('umount', [mnt]);
    }
    for (const pid of all) expect(findHolders(pid).length, `process ${pid}`).toBe(1);
    await expectTreeRunsOn(p, all);
    const again = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--tree', '--parent', join(work, 'pre'), '--json');
    expect(again.code, again.stderr).toBe(0);
    const out = JSON.parse(again.stdout) as { processes: { kind: string; trackingLost: string | null }[] };
    for (const x of out.processes) expect(x).toMatchObject({ kind: 'delta', trackingLost: null });
    expect(await allGone(all)).toEqual([]);
    // Their pids are free once the orphaned children's zombies are reaped too (init reaps 1.3-2 s late).
    await waitPidsFree(all, 15_000);
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    const status = async () => {
      const from = r.lines.length;
      r.writeLine('status');
      return /last=(\d+) bad=(\d+)/.exec(await r.waitForLine(/^STATUS/, 15_000, from))!.slice(1).map(Number);
    };
    const [last1] = await status();
    const [last2, bad] = await eventually(status, ([l, b]) => b !== 0 || l > last1, 10_000, 'the restored tree passing numbers on');
    expect(bad).toBe(0);
    expect(last2).toBeGreaterThan(last1);
  });

  it('kill-mode dump --tree: every process dies once the manifest is written, and the image verifies', async () => {
    const work = tmpDir('tsnap-intr-');
    const { p, all } = await startTree();
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree');
    expect(d.code, d.stderr).toBe(0);
    expect(await allGone(all)).toEqual([]);
    expect(existsSync(join(dir, 'tree'))).toBe(true);
    const v = await tsnap('verify', dir);
    expect(v.code, v.stderr).toBe(0);
  });
});

describe('restore killed at a named point', () => {
  // Each point in creation order; at each, tsnap is SIGKILLed while stopped there.
  const points = ['restore-helper-spawned', 'restore-helper-seized', 'restore-cloned', 'restore-tree-created', 'restore-before-start'];

  it('leaves no helper, no half-built process, and nobody holding tsnap\'s stdout/stderr', async () => {
    const work = tmpDir('tsnap-intr-');
    const { p } = await startTree();
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree', '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    for (const point of points) {
      // --new-pid: the original tree still runs with its pids.
      const t = startTsnap(['restore', '--dir', dir, '--new-pid', '--detach'], { TSNAP_TEST_PAUSE_AT: point });
      await pausedAt(t);
      const started = descendantsOf(t.child.pid!);
      for (const pid of started) registerPid(pid);
      expect(started.length, point).toBeGreaterThan(0);
      const exited = new Promise((resolve) => t.child.once('exit', resolve));
      process.kill(t.child.pid!, 'SIGKILL');
      await exited;
      expect(await allGone(started), point).toEqual([]);
      // 'close': every copy of tsnap's stdout and stderr pipes is closed.
      const r = await t.done;
      expect(r.signal, point).toBe('SIGKILL');
    }
    // The original tree was never touched.
    expect((await treeStatus(p)).bad).toBe(0);
  });

  it('a helper whose parent is not the one it was built for exits at once', async () => {
    // Built for pid 1: as if tsnap had died before the helper asked for PR_SET_PDEATHSIG.
    const file = loadProgram(HELPER_NAME, helperElf(1));
    try {
        const h = spawn(file.path, [], { stdio: 'ignore' });
        const code = await new Promise<number | null>((resolve) => h.on('exit', (c) => resolve(c)));
        expect(code).toBe(1);
    } finally {
      file.remove();
    }
  });
});

/**
 * Convergence: a source that writes faster than the link is throttled
 * (cgroup v1 cpu quota, src/migrate/throttle.ts), the report says so, and
 * the source's threads end up exactly in the cgroups they started in, on
 * every way out: a migration that ends, and a tsnap SIGKILLed while the
 * throttle is on (the guardian undoes it).
 */
import { describe, it, expect, afterAll, afterEach } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { startTsnap, tsnap, killPid } from './helpers/tsnap.js';
import { tracerFor, tracerOf, isGone } from './helpers/processes.js';
import { startServe } from './helpers/serve.js';
import { SourceThrottle, cpuHierarchy, ownThrottleName, sweepDeadThrottles } from '../src/migrate/throttle.js';
import { readStat } from '../src/proc/index.js';
import { Guardian } from '../src/sys/guardian.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const CPU = cpuHierarchy() ?? '/sys/fs/cgroup/cpu';
const made: string[] = [];
afterEach(async () => {
  // The in-process throttle tests' guardian: let it go the way tsnap's exit lets it go.
  const g = tracerFor(process.pid);
  Guardian.shutdown();
  if (g !== process.pid) await until(() => isGone(g), 'the guardian to exit');
  // Test cgroups, innermost first. Their tasks are this test's processes
  // (this hook runs before the process registry's): killed here by pid.
  for (const d of made.splice(0).reverse()) {
    for (let i = 0; i < 100 && existsSync(d); i++) {
      for (const tid of readFileSync(join(d, 'tasks'), 'utf8').split('\n').filter(Boolean)) await killPid(Number(tid));
      try { rmdirSync(d); } catch { await new Promise((r) => setTimeout(r, 20)); }
    }
  }
});

/** A cpu cgroup of the test's own, so that "put back exactly" is not just "put back in the root". */
function testCgroup(name: string): string {
  const d = join(CPU, `tsnap-test-${process.pid}-${name}`);
  mkdirSync(d, { recursive: true });
  made.push(d);
  return d;
}

function cpuCgroup(tid: number): string {
  const line = readFileSync(`/proc/${tid}/cgroup`, 'utf8').split('\n').find((l) => l.split(':')[1]?.split(',').includes('cpu'));
  return line!.split(':')[2];
}

const rel = (dir: string) => dir.slice(CPU.length) || '/';
const throttleDirs = (dir: string) => readdirSync(dir).filter((n) => n.startsWith('tsnap-throttle-'));

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function pausedAt(t: { child: { pid?: number }; done: Promise<{ stderr: string }> }): Promise<void> {
  const pid = t.child.pid!;
  await until(() => {
    let st = '';
    try { st = readFileSync(`/proc/${pid}/status`, 'utf8'); } catch { return true; }
    return /^State:\s+T/m.test(st);
  }, `tsnap ${pid} to reach its pause point`, 30_000);
  if (!existsSync(`/proc/${pid}`)) throw new Error(`tsnap ${pid} exited before its pause point: ${(await t.done).stderr}`);
}

describe('migrate convergence', () => {
  it('throttles a writer faster than the link (20%, then +10% a round), reports it, and puts it back in its own cgroup', async () => {
    const work = tmpDir('tsnap-conv-');
    const home = testCgroup('home');
    const srv = await startServe(join(work, 'in'));
    const p = await startProcess(await compileC('racer'), ['4096']);
    writeFileSync(join(home, 'tasks'), String(p.pid));
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--max-iterations', '4', '--downtime-ms', '1', '--leave-running', '--json');
    expect(r.code, r.stderr).toBe(0);
    const events = r.stderr.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
    const throttles = events.filter((e) => e.event === 'throttle');
    expect(throttles.length, r.stderr).toBeGreaterThan(0);
    expect(throttles.map((e) => e.throttlePct)).toEqual([20, 30, 40].slice(0, throttles.length));
    for (const e of throttles) expect(e.quotaUs).toBeGreaterThanOrEqual(1000);
    const done = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(done.convergence).toMatch(/^throttled to \d+% CPU from round \d+/);
    // Left running: in its own cgroup again, at full speed, nothing of the throttle left.
    expect(cpuCgroup(p.pid)).toBe(rel(home));
    expect(throttleDirs(home)).toEqual([]);
    expect(tracerOf(p.pid)).toBe(0);
    process.kill(p.pid, 'SIGUSR1');
    await p.waitForLine(/^(PASS|FAIL)/, 10_000);
    expect(p.lines().some((l) => l.startsWith('PASS'))).toBe(true);
  });

  it('tsnap SIGKILLed while the source is throttled: its guardian lifts the quota and moves it back', async () => {
    const work = tmpDir('tsnap-conv-');
    const home = testCgroup('home2');
    const srv = await startServe(join(work, 'in'));
    const p = await startProcess(await compileC('racer'), ['4096']);
    writeFileSync(join(home, 'tasks'), String(p.pid));
    const t = startTsnap(['migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--max-iterations', '8', '--downtime-ms', '1'], { TSNAP_TEST_PAUSE_AT: 'migrate-throttled' });
    await pausedAt(t);
    const guardian = tracerFor(t.child.pid!);
    expect(guardian).not.toBe(t.child.pid);
    // Stopped right after the throttle went on: the source is in tsnap's child cgroup.
    expect(cpuCgroup(p.pid)).toBe(`${rel(home)}/tsnap-throttle-${t.child.pid}.${readStat(t.child.pid!).startTime}`);
    process.kill(t.child.pid!, 'SIGKILL');
    await t.done;
    await until(() => cpuCgroup(p.pid) === rel(home) && throttleDirs(home).length === 0, 'the guardian to put the source back');
    expect(tracerOf(p.pid)).toBe(0);
    process.kill(p.pid, 'SIGUSR1');
    await p.waitForLine(/^(PASS|FAIL)/, 10_000);
    expect(p.lines().some((l) => l.startsWith('PASS'))).toBe(true);
  });

  it('threads spread over cgroups each go to a child of their own cgroup, and back to exactly it', async () => {
    const a = testCgroup('a');
    const b = testCgroup('b');
    const p = await startProcess(await compileC('threads'), ['3', '2000', 'print']);
    const tids = readdirSync(`/proc/${p.pid}/task`).map(Number);
    expect(tids.length).toBeGreaterThanOrEqual(4);
    writeFileSync(join(a, 'tasks'), String(tids[0]));
    for (const tid of tids.slice(1)) writeFileSync(join(b, 'tasks'), String(tid));
    const before = new Map(tids.map((tid) => [tid, cpuCgroup(tid)]));
    const th = new SourceThrottle(p.pid, false);
    try {
      await new Promise((r) => setTimeout(r, 100)); // a baseline of its CPU use
      const s = th.set(50);
      expect(s.quotaUs).toBeGreaterThanOrEqual(1000);
      for (const tid of tids) expect(cpuCgroup(tid)).toBe(`${before.get(tid)}/${ownThrottleName()}`);
      expect(Number(readFileSync(join(b, ownThrottleName(), 'cpu.cfs_quota_us'), 'utf8'))).toBe(s.quotaUs);
      th.set(60); // a step up changes the quota only
      expect(Number(readFileSync(join(a, ownThrottleName(), 'cpu.cfs_quota_us'), 'utf8'))).toBeLessThanOrEqual(s.quotaUs);
    } finally {
      th.release();
    }
    for (const tid of tids) expect(cpuCgroup(tid)).toBe(before.get(tid));
    expect([...throttleDirs(a), ...throttleDirs(b)]).toEqual([]);
    th.release(); // idempotent
    await killPid(p.pid);
  });

  it("a tree is throttled whole; a task born in a throttle cgroup meanwhile goes back to its creator's cgroup", async () => {
    const home = testCgroup('tree');
    const p = await startProcess(await compileC('tree'), ['print']);
    const kids = [Number(p.readyInfo.child1), Number(p.readyInfo.child2)];
    for (const pid of [p.pid, ...kids]) writeFileSync(join(home, 'tasks'), String(pid));
    const th = new SourceThrottle(p.pid, true);
    const child = join(home, ownThrottleName());
    const newborn = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      await new Promise((r) => setTimeout(r, 100));
      th.set(30);
      for (const pid of [p.pid, ...kids]) expect(cpuCgroup(pid)).toBe(`${rel(home)}/${ownThrottleName()}`);
      // As if the target had forked it while throttled: it is born in the child cgroup.
      writeFileSync(join(child, 'tasks'), String(newborn.pid));
    } finally {
      th.release();
    }
    for (const pid of [p.pid, ...kids]) expect(cpuCgroup(pid)).toBe(rel(home));
    expect(cpuCgroup(newborn.pid!)).toBe(rel(home));
    expect(existsSync(child)).toBe(false);
    await killPid(newborn.pid!);
    p.closeStdin();
  });

  it("a throttle left by a tsnap that died with its guardian is lifted by the next migration's sweep", async () => {
    const home = testCgroup('stale');
    // Its owner's pid is alive (ours) but not with that start time: a reused pid, so a dead owner.
    const stale = join(home, `tsnap-throttle-${process.pid}.1`);
    mkdirSync(stale);
    writeFileSync(join(stale, 'cpu.cfs_quota_us'), '1000');
    const victim = spawn('sleep', ['30'], { stdio: 'ignore' });
    writeFileSync(join(stale, 'tasks'), String(victim.pid));
    sweepDeadThrottles();
    expect(cpuCgroup(victim.pid!)).toBe(rel(home));
    expect(existsSync(stale)).toBe(false);
    await killPid(victim.pid!);
  });
});

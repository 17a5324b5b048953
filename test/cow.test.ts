/**
 * Copy-on-write dumps (dump --cow): the target runs while its memory is
 * copied, and the image is still its memory at one instant. The writer
 * fixture (cowwriter.c) rewrites its pages without pause from two threads
 * and checks, after the restore, that what it finds is a state it could
 * have been in at one instant, matching its own counters.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { existsSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running } from './helpers/fixtures.js';
import { tsnap, startTsnap, restoreDetached } from './helpers/tsnap.js';
import { killPid, tracerOf, waitPidsFree } from './helpers/processes.js';
import { takePid } from './helpers/take-pid.js';
import type { DumpStats } from '../formats/schema.js';
import { getSched, SCHED_FIFO, SCHED_OTHER, SCHED_RESET_ON_FORK } from '../src/sys/sched.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const PAGES = '2048'; // per thread: 8 MiB each

type Talker = { writeLine(s: string): void; waitForLine(re: RegExp, t?: number, from?: number): Promise<string> };
async function check(p: Talker, from: number): Promise<string> {
  p.writeLine('check');
  return p.waitForLine(/^(CONSISTENT|INCONSISTENT)/, 10_000, from);
}
const countersOf = (line: string) => /counters=([\d,]+)/.exec(line)![1].split(',').map(Number);
const tasksOf = (pid: number) => readdirSync(`/proc/${pid}/task`).map(Number);

/** Nothing of the dump is left in the target: untraced, no uffd, no write-protected VMA. */
function untouched(pid: number): void {
  for (const t of tasksOf(pid)) expect(tracerOf(t), `thread ${t}`).toBe(0);
  const fds = readdirSync(`/proc/${pid}/fd`).map((f) => { try { return readlinkSync(`/proc/${pid}/fd/${f}`); } catch { return ''; } });
  expect(fds.filter((l) => l.includes('userfaultfd'))).toEqual([]);
  const flags = readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n').filter((l) => l.startsWith('VmFlags:'));
  expect(flags.filter((l) => / uw/.test(l))).toEqual([]);
}

async function restoreAndCheck(dir: string, work: string, pids: number[]): Promise<string> {
  await waitPidsFree(pids);
  const r = await restoreDetached(dir, join(work, 'pid'));
  expect(r.result.code, r.result.stderr).toBe(0);
  return check(r, 0);
}

describe('copy-on-write dumps', () => {
  it('an image taken while two threads write on is their memory at one instant (leave-running: copy-on-write by default from 32 MiB)', async () => {
    const work = tmpDir('tsnap-cow-');
    const p = await startProcess(await compileC('cowwriter'), ['4096', '2']);
    const tids = tasksOf(p.pid);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--json');
    expect(d.code, d.stderr).toBe(0);
    const stats = JSON.parse(d.stdout).stats as DumpStats;
    expect(stats.cow!.pagesProtected).toBeGreaterThanOrEqual(2 * 4096);
    console.log(`cow: frozen ${Math.round(stats.frozenUs)} µs of ${Math.round(stats.totalUs)}; ${stats.cow!.faults} faults (${stats.cow!.faultPages} pages saved), mean ${stats.cow!.faultMeanUs.toFixed(1)} µs`);
    untouched(p.pid);
    const live = await check(p, p.lines().length);
    expect(live).toMatch(/^CONSISTENT/);
    killPid(p.pid);
    const restored = await restoreAndCheck(dir, work, tids);
    expect(restored).toMatch(/^CONSISTENT/);
    // The image is older than the live check, and the writers did move.
    countersOf(restored).forEach((c, i) => expect(c).toBeLessThanOrEqual(countersOf(live)[i]));
  });

  it('kill mode, with a fault store of 32 pages: writers wait for the copy when it is full, are killed after, and come back as they were at the freeze', async () => {
    const work = tmpDir('tsnap-cow-');
    const p = await startProcess(await compileC('cowwriter'), [PAGES, '2']);
    const tids = tasksOf(p.pid);
    const dir = join(work, 'img');
    const d = await startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--cow', '--json'], { TSNAP_COW_STORE_PAGES: '32' }).done;
    expect(d.code, d.stderr).toBe(0);
    const cow = (JSON.parse(d.stdout).stats as DumpStats).cow!;
    console.log(`cow, store of 32 pages: ${cow.faults} faults, ${cow.faultsDeferred} deferred, ${cow.faultPages} pages saved`);
    await p.exited;
    expect(await restoreAndCheck(dir, work, tids)).toMatch(/^CONSISTENT/);
  });

  it('SIGKILL of tsnap mid-copy: the kernel drops every protection, the blocked writers wake and run on', async () => {
    const work = tmpDir('tsnap-cow-');
    const p = await startProcess(await compileC('cowwriter'), [PAGES, '2']);
    const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--leave-running', '--cow'], { TSNAP_TEST_PAUSE_AT: 'cow-running' });
    await waitForStderr(t.child, /paused at cow-running/);
    // tsnap is stopped with every page protected: the writers are blocked in faults now.
    t.child.kill('SIGKILL');
    const r = await t.done;
    expect(r.signal).toBe('SIGKILL');
    await expectWritersRun(p);
    untouched(p.pid);
  });

  it('SIGTERM mid-copy of a final round: abandoned, the target unprotected and untraced, its tracking ended (the next round copies everything)', async () => {
    const work = tmpDir('tsnap-cow-');
    const p = await startProcess(await compileC('cowwriter'), [PAGES, '1']);
    const pre = await tsnap('pre-dump', '--pid', String(p.pid), '--dir', join(work, 'pre'));
    expect(pre.code, pre.stderr).toBe(0);
    const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--parent', join(work, 'pre'), '--leave-running', '--cow'], { TSNAP_TEST_PAUSE_AT: 'cow-running' });
    await waitForStderr(t.child, /paused at cow-running/);
    // It says so just before it stops itself: a SIGCONT sent earlier would be lost.
    await waitStopped(t.child.pid!);
    t.child.kill('SIGTERM');
    t.child.kill('SIGCONT');
    const r = await t.done;
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/interrupted by SIGTERM/);
    await expectWritersRun(p);
    untouched(p.pid);
    // Its VMAs left the tracking: trusting it would miss their writes.
    const again = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'again'), '--parent', join(work, 'pre'), '--leave-running', '--json');
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toMatch(/tracking of process \d+ was lost/);
    expect(JSON.parse(again.stdout).kind).toBe('full');
  });

  it('a target of more threads than the watchdog lists has only the listed ones raised at the freeze, and every one back in its class after', async () => {
    const work = tmpDir('tsnap-cow-');
    const p = await startProcess(await compileC('threads'), ['80', '2000', 'print'], { readyPattern: /READY/ });
    const policyOf = (tid: number) => getSched(tid)!.policy & ~SCHED_RESET_ON_FORK;
    const tids = tasksOf(p.pid);
    expect(tids.length).toBeGreaterThan(64);
    const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--leave-running', '--cow', '--json'], { TSNAP_TEST_PAUSE_AT: 'dump-frozen' });
    await waitForStderr(t.child, /paused at dump-frozen/);
    await waitStopped(t.child.pid!);
    // The window's watchdog lists the first 64 (frozen-window.ts): those are raised, the rest are left in their class.
    const raised = tids.filter((tid) => policyOf(tid) === SCHED_FIFO);
    expect(raised.length).toBe(64);
    expect(tids.filter((tid) => policyOf(tid) === SCHED_OTHER).length).toBe(tids.length - 64);
    t.child.kill('SIGCONT');
    const d = await t.done;
    expect(d.code, d.stderr).toBe(0);
    for (const tid of tids) expect(policyOf(tid), `thread ${tid}`).toBe(SCHED_OTHER);
    killPid(p.pid);
  });

  it('the frozen window runs in the real-time class, the target\'s threads too, all go back to their own class at the release, and a SIGTERM there leaves nothing raised', async () => {
    const work = tmpDir('tsnap-cow-');
    const p = await startProcess(await compileC('cowwriter'), [PAGES, '1']);
    const tids = tasksOf(p.pid);
    const guardianOf = (pid: number) => readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).map(Number)
      .find((c) => { try { return readFileSync(`/proc/${c}/comm`, 'utf8').startsWith('tsnap-guard'); } catch { return false; } });
    const policyOf = (tid: number) => getSched(tid)!.policy & ~SCHED_RESET_ON_FORK;
    // Frozen: tsnap's main thread and the guardian in SCHED_FIFO; released: both back.
    for (const [at, policy] of [['dump-frozen', SCHED_FIFO], ['cow-running', SCHED_OTHER]] as const) {
      const dir = join(work, `img-${at}`);
      const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--cow', '--json'], { TSNAP_TEST_PAUSE_AT: at });
      await waitForStderr(t.child, new RegExp(`paused at ${at}`));
      await waitStopped(t.child.pid!);
      const tsnapPid = t.child.pid!;
      const guardian = guardianOf(tsnapPid);
      expect(guardian, 'the guardian').toBeDefined();
      expect(policyOf(tsnapPid), `tsnap at ${at}`).toBe(policy);
      expect(policyOf(guardian!), `its guardian at ${at}`).toBe(policy);
      // The target's threads: raised by the guardian's freeze, their own class back at its release.
      for (const tid of tids) expect(policyOf(tid), `target thread ${tid} at ${at}`).toBe(policy);
      t.child.kill('SIGCONT');
      const d = await t.done;
      expect(d.code, d.stderr).toBe(0);
      const cow = (JSON.parse(d.stdout).stats as DumpStats).cow!;
      expect(cow.windowRt).toBe(true);
      expect(cow.targetRt).toBe(true);
      expect(cow.windowWaitUs).toBeGreaterThanOrEqual(0);
      expect(cow.releaseUs).toBeGreaterThan(0);
    }
    // Interrupted frozen: the dump is abandoned, the target untouched and in its own class, and the guardian, if it outlives tsnap, back in its own.
    const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', join(work, 'abandoned'), '--leave-running', '--cow'], { TSNAP_TEST_PAUSE_AT: 'dump-frozen' });
    await waitForStderr(t.child, /paused at dump-frozen/);
    await waitStopped(t.child.pid!);
    const guardian = guardianOf(t.child.pid!)!;
    expect(policyOf(guardian)).toBe(SCHED_FIFO);
    for (const tid of tids) expect(policyOf(tid)).toBe(SCHED_FIFO);
    t.child.kill('SIGTERM');
    t.child.kill('SIGCONT');
    const r = await t.done;
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/interrupted by SIGTERM/);
    await expectWritersRun(p);
    untouched(p.pid);
    for (const tid of tids) expect(policyOf(tid), `target thread ${tid}`).toBe(SCHED_OTHER);
    const after = getSched(guardian);
    if (after) expect(after.policy & ~SCHED_RESET_ON_FORK).toBe(SCHED_OTHER);
    // The guardian killed frozen (the kernel lets the target go, raised): tsnap puts the class back as the dump fails.
    const k = startTsnap(['dump', '--pid', String(p.pid), '--dir', join(work, 'no-guardian'), '--leave-running', '--cow'], { TSNAP_TEST_PAUSE_AT: 'dump-frozen' });
    await waitForStderr(k.child, /paused at dump-frozen/);
    await waitStopped(k.child.pid!);
    const g2 = guardianOf(k.child.pid!)!;
    for (const tid of tids) expect(policyOf(tid)).toBe(SCHED_FIFO);
    process.kill(g2, 'SIGKILL');
    k.child.kill('SIGCONT');
    const kr = await k.done;
    expect(kr.code).not.toBe(0);
    await expectWritersRun(p);
    for (const tid of tids) expect(policyOf(tid), `target thread ${tid} after its guardian died`).toBe(SCHED_OTHER);
    killPid(p.pid);
  });

  it.each([
    ['SIGUSR1', 'munmap', 'unmapped', 'UNMAPPED'],
    ['SIGUSR2', 'MADV_DONTNEED', 'dropped \\(MADV_DONTNEED or MADV_REMOVE\\)', 'DROPPED'],
  ] as const)('memory removed (%s: %s) before the copy reached it: the dump is taken again, frozen, and is consistent', async (sig, _what, said, flag) => {
    const work = tmpDir('tsnap-cow-');
    // 32 MiB of slices, copied first, then a 4 MiB region it unmaps (SIGUSR1) or drops (SIGUSR2).
    const p = await startProcess(await compileC('cowwriter'), ['8192', '1', '1024']);
    const tids = tasksOf(p.pid);
    const dir = join(work, 'img');
    const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--cow', '--json'], { TSNAP_TEST_PAUSE_AT: 'cow-running' });
    await waitForStderr(t.child, /paused at cow-running/);
    await waitStopped(t.child.pid!);
    // Protected and released, nothing copied yet: the removal runs up to its event, which waits for tsnap.
    process.kill(p.pid, sig);
    t.child.kill('SIGCONT');
    const d = await t.done;
    expect(d.code, d.stderr).toBe(0);
    expect(d.stderr).toMatch(new RegExp(`${said} memory not yet copied at 0x7e0000000000 while it ran; dumping process \\d+ again, frozen`));
    expect((JSON.parse(d.stdout).stats as DumpStats).cow).toBeUndefined();
    killPid(p.pid);
    expect(await restoreAndCheck(dir, work, tids)).toMatch(new RegExp(`^CONSISTENT .*${flag}`));
  });

  it('memory written, first touched or newly mapped between the early protection and the freeze is in the image as it was at the freeze, however it is written after', async () => {
    const work = tmpDir('tsnap-cow-');
    const p = await startProcess(await compileC('cowtouch'), ['2048']);
    const dir = join(work, 'img');
    const go = join(work, 'go');
    const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--cow', '--json'], { TSNAP_TEST_HOLD_AT: `cow-prearmed:${go}`, TSNAP_TRACE: '1' });
    await waitForStderr(t.child, /holding at cow-prearmed/);
    // Protected, not yet frozen: tsnap's fault server lets these writes go.
    let mark = p.lines().length;
    p.writeLine('phase1');
    await p.waitForLine(/^DONE1/, 10_000, mark);
    const released = waitForStderr(t.child, /cow: released/);
    writeFileSync(go, '');
    // Frozen and released: while its memory is copied, the target overwrites all of it.
    await released;
    mark = p.lines().length;
    p.writeLine('phase2');
    await p.waitForLine(/^DONE2/, 10_000, mark);
    const d = await t.done;
    expect(d.code, d.stderr).toBe(0);
    const cow = (JSON.parse(d.stdout).stats as DumpStats).cow!;
    console.log(`cow after phase1: ${cow.earlyFaults} early faults, ${cow.pagesReprotected} pages protected again frozen, ${cow.faults} faults after`);
    expect(cow.earlyFaults).toBeGreaterThan(0);
    // Half of A written again, half of B touched first, all of C new.
    expect(cow.pagesReprotected).toBeGreaterThanOrEqual(2048 * 2);
    killPid(p.pid);
    await waitPidsFree([p.pid]);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('check');
    expect(await r.waitForLine(/^(AT-PHASE1|MISMATCH)/, 10_000)).toBe('AT-PHASE1');
  });

  it('a fork during the copy: the child runs free (its pages unprotected), the parent\'s image is still consistent', async () => {
    const work = tmpDir('tsnap-cow-');
    const p = await startProcess(await compileC('cowwriter'), [PAGES, '1', '16']);
    const tids = tasksOf(p.pid);
    const dir = join(work, 'img');
    const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--cow', '--json'], { TSNAP_TEST_PAUSE_AT: 'cow-running' });
    await waitForStderr(t.child, /paused at cow-running/);
    await waitStopped(t.child.pid!);
    // The fork (a raw syscall on the never-touched alternate stack) happens as the copy starts.
    process.kill(p.pid, 'SIGWINCH');
    t.child.kill('SIGCONT');
    const d = await t.done;
    expect(d.code, d.stderr).toBe(0);
    expect((JSON.parse(d.stdout).stats as DumpStats).cow).toBeDefined();
    // The child wrote over all of its copy of the slice and exited: a zombie of the writer.
    let zombie = false;
    for (let i = 0; i < 500 && !zombie; i++) {
      const kids = readFileSync(`/proc/${p.pid}/task/${p.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
      zombie = kids.some((k) => { try { return /^State:\s+Z/m.test(readFileSync(`/proc/${k}/status`, 'utf8')); } catch { return false; } });
      if (!zombie) await new Promise((r) => setTimeout(r, 10));
    }
    expect(zombie).toBe(true);
    await expectWritersRun(p);
    killPid(p.pid);
    expect(await restoreAndCheck(dir, work, tids)).toMatch(/^CONSISTENT/);
  });

  it('a tracked target: a plain dump copies the tracked VMAs frozen (EBUSY); the final round of its chain (dump --parent --cow, kill mode) takes them from the tracking and copies the delta while it runs', async () => {
    const work = tmpDir('tsnap-cow-');
    const p = await startProcess(await compileC('cowwriter'), [PAGES, '1']);
    const tids = tasksOf(p.pid);
    const pre = await tsnap('pre-dump', '--pid', String(p.pid), '--dir', join(work, 'pre'));
    expect(pre.code, pre.stderr).toBe(0);
    const plain = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'plain'), '--leave-running', '--cow', '--json');
    expect(plain.code, plain.stderr).toBe(0);
    const cow = (JSON.parse(plain.stdout).stats as DumpStats).cow!;
    expect(cow.pagesFrozenCopy).toBeGreaterThanOrEqual(Number(PAGES));
    expect(cow.pagesProtected).toBeLessThan(Number(PAGES));
    const fin = join(work, 'fin');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', fin, '--parent', join(work, 'pre'), '--cow', '--json');
    expect(d.code, d.stderr).toBe(0);
    const out = JSON.parse(d.stdout);
    expect(out.kind).toBe('delta');
    expect((out.stats as DumpStats).cow!.pagesProtected).toBeGreaterThan(0);
    await p.exited;
    expect(await restoreAndCheck(fin, work, tids)).toMatch(/^CONSISTENT/);
  });

  // The target runs untraced during the copy: it may exit, and its pid go
  // to another process, before tsnap acts on that pid again (the frozen
  // retry of a lost copy-on-write dump, kill mode's kill). Found by the
  // trust audit of session 23: both went to the stranger, which was dumped
  // and killed (exit 0).
  for (const [at, what] of [
    ['cow-running', 'exits mid-copy (the copy is lost): the retry refuses its pid, exit 3, no image'],
    ['committed', 'exits once copied, before kill mode kills it: the image stands, exit 0'],
  ] as const) {
    it(`a target that ${what}; the process that has taken its pid meanwhile is left alone`, async () => {
      const work = tmpDir('tsnap-cow-');
      const p = await startProcess(await compileC('cowwriter'), [PAGES, '2']);
      const dir = join(work, 'img');
      // Kill mode: what a tsnap that mistook the stranger for its target would do to it shows.
      const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--cow'], { TSNAP_TEST_PAUSE_AT: at });
      await waitForStderr(t.child, new RegExp(`paused at ${at}`));
      await waitStopped(t.child.pid!);
      const pid = p.pid;
      await p.kill();
      const stranger = await takePid(pid);
      try {
        t.child.kill('SIGCONT');
        const r = await t.done;
        const said = r.stderr.split('\n').filter((l) => l && !l.startsWith('tsnap: paused at'));
        if (at === 'cow-running') {
          expect(r.code, r.stderr).toBe(3);
          expect(said, r.stderr).toHaveLength(1);
          expect(said[0]).toMatch(new RegExp(`process ${pid} exited while it was dumped`));
          expect(existsSync(join(dir, 'inventory'))).toBe(false);
        } else {
          expect(r.code, r.stderr).toBe(0);
        }
        await new Promise((res) => setTimeout(res, 100));
        expect(readFileSync(`/proc/${stranger}/cmdline`, 'utf8').split('\0')[0], 'the stranger').toBe('sleep');
        expect(readFileSync(`/proc/${stranger}/status`, 'utf8')).toMatch(/^State:\s+S/m);
        expect(tracerOf(stranger)).toBe(0);
      } finally {
        await killPid(stranger);
      }
    });
  }
});

/** Consistent, and every writer moves on (given some time: two cores are shared with other work). */
async function expectWritersRun(p: Running): Promise<void> {
  const a = await check(p, p.lines().length);
  expect(a).toMatch(/^CONSISTENT/);
  for (let i = 0; ; i++) {
    await new Promise((r) => setTimeout(r, 20));
    const b = await check(p, p.lines().length);
    expect(b).toMatch(/^CONSISTENT/);
    if (countersOf(b).every((c, k) => c > countersOf(a)[k])) return;
    if (i === 100) throw new Error(`the writers did not move on: ${a} then ${b}`);
  }
}

async function waitStopped(pid: number): Promise<void> {
  while (!/^State:\s+T/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))) await new Promise((r) => setTimeout(r, 5));
}

function waitForStderr(child: { stderr: NodeJS.ReadableStream | null }, re: RegExp): Promise<void> {
  return new Promise((resolve, reject) => {
    let text = '';
    const t = setTimeout(() => reject(new Error(`timeout waiting for ${re} on tsnap's stderr: ${text}`)), 20_000);
    child.stderr!.on('data', (d) => { text += d; if (re.test(text)) { clearTimeout(t); resolve(); } });
  });
}


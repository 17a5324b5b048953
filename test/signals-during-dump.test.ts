/**
 * Signals sent to a target while it is being dumped: none may be lost or
 * delivered twice, and a stop sent during the dump must stick. A tracer
 * that resumes a task from a signal-delivery stop without re-injecting the
 * signal loses it; one that ends its trace over a group-stop can leave the
 * task running when the user stopped it. The target counts queued
 * SIGRTMINs with their values (test/fixtures/sigcount.c), so a loss, a
 * repeat or a reordering shows in its own tally.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running } from './helpers/fixtures.js';
import { tsnap, startTsnap, restoreDetached, type Restored } from './helpers/tsnap.js';
import { waitPidsFree } from '../src/migrate/pid-wait.js';
import { readImage } from '../src/image/image-reader.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

interface Tally { count: number; sum: number; max: number; outOfOrder: number; backwards: number; line?: string }

function parseTally(line: string): Tally {
  const m = /^COUNT (\d+) SUM (\d+) MAX (\d+) OOO (\d+) BACK (\d+)/.exec(line);
  if (!m) throw new Error(`not a tally: ${line}`);
  return { count: Number(m[1]), sum: Number(m[2]), max: Number(m[3]), outOfOrder: Number(m[4]), backwards: Number(m[5]), line };
}

/** The target's tally once it has taken `want` signals (or, with want undefined, as it is). */
async function tally(p: Running | Restored, lines: () => string[], want?: number): Promise<Tally> {
  const end = Date.now() + 15_000;
  for (;;) {
    const from = lines().length;
    p.writeLine('count');
    const t = parseTally(await p.waitForLine(/^COUNT /, 10_000, from));
    if (want === undefined || t.count >= want || Date.now() > end) return t;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Ends a sender (SIGTERM; it may have ended at ESRCH already) and gives how many signals the kernel took. */
async function stopSender(sender: Running): Promise<number> {
  try { process.kill(sender.pid, 'SIGTERM'); } catch { /* it ended at ESRCH */ }
  return Number(/^DONE (\d+)/.exec(await sender.waitForLine(/^DONE /, 10_000))![1]);
}

/** A sender of SIGRTMIN 1, 2, 3... to pid until SIGTERM (or the target's end); done() resolves with how many the kernel took. */
async function startSender(bin: string, pid: number): Promise<{ sender: Running; done: () => Promise<number> }> {
  const sender = await startProcess(bin, ['send', String(pid), '0', '200'], { readyPattern: /^SENT 100$/ });
  return { sender, done: () => stopSender(sender) };
}

/** A sender that waits up to 20 s for pid to exist (a restore making it), values from base + 1. */
function startWaitingSender(bin: string, pid: number, base = 0): Promise<Running> {
  return startProcess(bin, ['send', String(pid), '0', '200', '20000', String(base)], { readyPattern: /^WAITING$/ });
}

function status(pid: number, key: string): string {
  return new RegExp(`^${key}:\\s*(.*)$`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '';
}

/** A kill-mode dump of a sigcount target taking a sender's signals; returns once its pid is free, with how many were sent. */
async function killDumpWhileSending(bin: string): Promise<{ work: string; p: Running; sentBefore: number }> {
  const work = tmpDir('tsnap-sig-');
  const p = await startProcess(bin, ['run']);
  const first = await startSender(bin, p.pid);
  const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
  expect(d.code, d.stderr).toBe(0);
  await p.exited;
  const sentBefore = await first.done();
  await waitPidsFree([p.pid], { timeoutMs: 10_000 });
  return { work, p, sentBefore };
}

/** The tally's figures without its line. */
const bare = (t: Tally): Tally => ({ count: t.count, sum: t.sum, max: t.max, outOfOrder: t.outOfOrder, backwards: t.backwards });
const exact = (k: number): Tally => ({ count: k, sum: (k * (k + 1)) / 2, max: k, outOfOrder: 0, backwards: 0 });

describe('signals sent during a dump', () => {
  const leaveRunning: [string, (pid: number, work: string) => Promise<void>][] = [
    ['dump --leave-running (copy-on-write)', async (pid, work) => {
      const r = await tsnap('dump', '--pid', String(pid), '--dir', join(work, 'img'), '--leave-running');
      expect(r.code, r.stderr).toBe(0);
    }],
    ['dump --leave-running --no-cow', async (pid, work) => {
      const r = await tsnap('dump', '--pid', String(pid), '--dir', join(work, 'img'), '--leave-running', '--no-cow');
      expect(r.code, r.stderr).toBe(0);
    }],
    ['pre-dump, pre-dump --parent, dump --leave-running --parent', async (pid, work) => {
      let parent: string | undefined;
      for (const [i, verb] of (['pre-dump', 'pre-dump', 'dump'] as const).entries()) {
        const dir = join(work, String(i));
        const r = await tsnap(verb, '--pid', String(pid), '--dir', dir, ...(parent ? ['--parent', parent] : []), ...(verb === 'dump' ? ['--leave-running'] : []));
        expect(r.code, r.stderr).toBe(0);
        parent = dir;
      }
    }],
  ];

  for (const [name, dumpIt] of leaveRunning) {
    it(`${name}: the target takes every signal once, in order, and runs on untraced`, async () => {
      const work = tmpDir('tsnap-sig-');
      const bin = await compileC('sigcount');
      const p = await startProcess(bin, ['run']);
      const { done } = await startSender(bin, p.pid);
      await dumpIt(p.pid, work);
      const sent = await done();
      expect(sent).toBeGreaterThan(100);
      const t = await tally(p, () => p.lines(), sent);
      expect(bare(t), t.line).toEqual(exact(sent));
      expect(status(p.pid, 'TracerPid')).toBe('0');
      expect(status(p.pid, 'State')).not.toMatch(/^[tT]/);
    });
  }

  it('kill mode: the restored process has taken exactly the first k signals, k at least those sent before the dump', async () => {
    const work = tmpDir('tsnap-sig-');
    const bin = await compileC('sigcount');
    const p = await startProcess(bin, ['run']);
    const { sender, done } = await startSender(bin, p.pid);
    const before = Math.max(...sender.lines().map((l) => Number(/^SENT (\d+)/.exec(l)?.[1] ?? 0)));
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const sent = await done();
    await waitPidsFree([p.pid], { timeoutMs: 10_000 });
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    // Signals queued after the dump read the queue died with the process (as with any checkpoint tool);
    // the ones before it must all be there once, in order.
    const t = await tally(r, () => r.lines);
    expect(t.count).toBeGreaterThanOrEqual(before);
    expect(t.count).toBeLessThanOrEqual(sent);
    expect(bare(t), t.line).toEqual(exact(t.count));
  });

  it('signals sent from the instant the restored process exists: it takes every one once, in order', async () => {
    const work = tmpDir('tsnap-sig-');
    const bin = await compileC('sigcount');
    const p = await startProcess(bin, ['run']);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await waitPidsFree([p.pid], { timeoutMs: 10_000 });
    // The sender polls for the pid, so its first signal lands as soon as the restore's clone makes it.
    const sender = await startWaitingSender(bin, p.pid);
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    await sender.waitForLine(/^SENT 200$/, 10_000);
    const sent = await stopSender(sender);
    const t = await tally(r, () => r.lines, sent);
    expect(bare(t), t.line).toEqual(exact(sent));
    expect(status(r.pid, 'TracerPid')).toBe('0');
  });

  it('kill mode, signals through the dump and again through the restore: every one comes once, each sender\'s in order', async () => {
    const bin = await compileC('sigcount');
    const { work, p, sentBefore } = await killDumpWhileSending(bin);
    const BASE = 1_000_000;
    const second = await startWaitingSender(bin, p.pid, BASE);
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    await second.waitForLine(/^SENT 200$/, 10_000);
    const sentAfter = await stopSender(second);
    const t = await tally(r, () => r.lines, sentAfter);
    // 1..j from the first sender (j: those queued before the dump read the queue) and BASE+1..BASE+sentAfter.
    // The image's are queued as soon as the process exists; a sender this fast still gets some in
    // before them, and among them (docs/reliability.md); each sender's come in its order.
    const j = t.count - sentAfter;
    expect(j).toBeGreaterThanOrEqual(0);
    expect(j).toBeLessThanOrEqual(sentBefore);
    expect(t.max).toBe(BASE + sentAfter);
    expect(t.sum).toBe((j * (j + 1)) / 2 + sentAfter * BASE + (sentAfter * (sentAfter + 1)) / 2);
    expect(t.backwards, t.line).toBe(0);
  });

  it('kill mode: the signals pending at the dump come before those sent while the restore builds the process', async () => {
    const bin = await compileC('sigcount');
    const { work, p } = await killDumpWhileSending(bin);
    // Paused right after it queued the image's signals: what is sent now is sent during the restore.
    let tsnapPid = 0;
    const restoring = restoreDetached(join(work, 'img'), join(work, 'pid'), [], { env: { TSNAP_TEST_PAUSE_AT: 'restore-pending-queued' }, onSpawn: (pid) => { tsnapPid = pid; } });
    const stopped = () => { try { return /^\S+ \(.*\) T/.test(readFileSync(`/proc/${tsnapPid}/stat`, 'utf8')); } catch { return false; } };
    for (let i = 0; i < 3000 && !stopped(); i++) await new Promise((r) => setTimeout(r, 10));
    expect(stopped(), 'tsnap paused at restore-pending-queued').toBe(true);
    const BASE = 1_000_000;
    const second = await startProcess(bin, ['send', String(p.pid), '50', '100', '0', String(BASE)], { readyPattern: /^DONE / });
    expect(second.readyLine).toBe('DONE 50');
    process.kill(tsnapPid, 'SIGCONT');
    const r = await restoring;
    expect(r.result.code, r.result.stderr).toBe(0);
    // The image's pending SIGRTMINs (the first sender's last ones), then BASE+1..BASE+50: one value
    // out of sequence (the step to BASE+1), none backwards. Queued after them, as before, the step
    // back from BASE+50 would be a second.
    const held = readImage(join(work, 'img')).process!;
    const j = [...held.signals.sharedPending, ...held.threads[0].pendingSignals].filter((b) => b.readInt32LE(0) === 34).length;
    expect(j, 'SIGRTMINs pending in the image (the dump froze while they came)').toBeGreaterThan(0);
    const t = await tally(r, () => r.lines, undefined);
    expect(t.max, t.line).toBe(BASE + 50);
    expect(t.backwards, t.line).toBe(0);
    expect(t.outOfOrder, t.line).toBe(1);
  });

  it('SIGSTOP sent at an instant during a dump --leave-running: the target ends stopped and untraced, and SIGCONT resumes it', async () => {
    const work = tmpDir('tsnap-sig-');
    const bin = await compileC('sigcount');
    // Instants spread over one dump's length, measured first on this machine.
    const probe = await startProcess(bin, ['run']);
    const t0 = Date.now();
    expect((await tsnap('dump', '--pid', String(probe.pid), '--dir', join(work, 'probe'), '--leave-running')).code).toBe(0);
    const span = Date.now() - t0;
    await probe.kill();
    for (let trial = 0; trial < 4; trial++) {
      const p = await startProcess(bin, ['run']);
      const dumping = tsnap('dump', '--pid', String(p.pid), '--dir', join(work, `img${trial}`), '--leave-running');
      await new Promise((r) => setTimeout(r, Math.round((span * trial) / 4)));
      process.kill(p.pid, 'SIGSTOP');
      const r = await dumping;
      // A dump that saw the stop may refuse or succeed; either way the target is left as the user made it.
      expect(r.stderr.trim().split('\n').filter(Boolean).length, r.stderr).toBeLessThanOrEqual(1);
      const end = Date.now() + 5000;
      while (!/^T/.test(status(p.pid, 'State')) && Date.now() < end) await new Promise((res) => setTimeout(res, 20));
      expect(status(p.pid, 'State'), `trial ${trial} at ${Math.round((span * trial) / 4)} ms of ${span}`).toMatch(/^T \(stopped\)/);
      expect(status(p.pid, 'TracerPid')).toBe('0');
      process.kill(p.pid, 'SIGCONT');
      const t = await tally(p, () => p.lines());
      expect(t.count).toBe(0);
      await p.kill();
    }
  });

  it('the target SIGKILLed at each step of a dump: the dump fails in one line or its image restores; a failed one leaves nothing to restore', async () => {
    const work = tmpDir('tsnap-sig-');
    const bin = await compileC('sigcount');
    // The kill lands just after the dump's trace says the step is done: inside the frozen window.
    const marks = ['dump: freezing', 'state: scratch mapped', 'state: batch ready', 'pipes of', 'dump: pages copied', 'dump: inventory written', 'dump: round committed'];
    for (const [trial, mark] of marks.entries()) {
      const p = await startProcess(bin, ['run']);
      const dir = join(work, `img${trial}`);
      const mode = trial % 2 ? ['--leave-running', '--no-cow'] : [];
      const { child, done } = startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, ...mode], { TSNAP_TRACE: '1' });
      let seen = false;
      child.stderr!.on('data', (d) => {
        if (seen || !String(d).includes(mark)) return;
        seen = true;
        try { process.kill(p.pid, 'SIGKILL'); } catch { /* ended already */ }
      });
      const d = await done;
      try { process.kill(p.pid, 'SIGKILL'); } catch { /* ended */ }
      await p.exited;
      const said = d.stderr.split('\n').filter((l) => l && !l.startsWith('tsnap-trace '));
      const what = `killed at "${mark}" (${mode.join(' ') || 'kill mode'}, mark seen: ${seen}): ${said.join(' | ')}`;
      if (d.code !== 0) {
        expect(said, what).toHaveLength(1);
        const r = await tsnap('restore', '--dir', dir);
        expect(r.code, what).not.toBe(0);
        expect(r.stderr.trim().split('\n'), what).toHaveLength(1);
        continue;
      }
      await waitPidsFree([p.pid], { timeoutMs: 10_000 });
      const r = await restoreDetached(dir, join(work, `pid${trial}`));
      expect(r.result.code, `${what} restore: ${r.result.stderr}`).toBe(0);
      expect((await tally(r, () => r.lines)).outOfOrder).toBe(0);
      process.kill(r.pid, 'SIGKILL');
    }
  });
});

/**
 * Migration to "another host": the receiver in its own pid and network
 * namespaces (test/helpers/other-host.ts), where the source's pid is free
 * at once; and, on one host, a pid still held is named, not waited for in
 * silence.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, startTsnap, TSNAP_BIN, killPid } from './helpers/tsnap.js';
import { startOtherHost, leftovers } from './helpers/other-host.js';
import { pidHolder, waitPidsFree } from '../src/migrate/pid-wait.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

async function until(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('migration to another host (own pid + net namespaces)', () => {
  it('restores at once with the same pid inside the namespace; the process checks itself there; nothing is left after', async () => {
    const work = tmpDir('tsnap-oh-');
    const out = join(work, 'restored.out');
    const oh = await startOtherHost(TSNAP_BIN, ['--dir', join(work, 'in'), '--token', 'sesame', '--restore', '--count', '1', '--stdout', out]);
    try {
      const p = await startProcess(await compileC('racer'), ['1024']);
      const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `${oh.host}:${oh.port}`, '--token', 'sesame', '--max-iterations', '2', '--json');
      expect(r.code, r.stderr).toBe(0);
      const done = JSON.parse(r.stdout.trim().split('\n').pop()!);
      expect(done.restoreError).toBeNull();
      // The namespace numbers it as the source was numbered here: clone3 set_tid in the child pid namespace.
      expect(done.restoredPid).toBe(p.pid);
      await until(() => oh.events.some((e) => e.includes('"restored"')), 'the restored event');
      expect(oh.events.filter((e) => e.includes('waiting-for-pid'))).toEqual([]);
      const there = oh.hostPid(p.pid);
      expect(there).not.toBeNull();
      expect(there).not.toBe(p.pid);
      process.kill(there!, 'SIGUSR1');
      await until(() => /^(PASS|FAIL)/m.test(existsSync(out) ? readFileSync(out, 'utf8') : ''), 'the restored racer to check itself');
      expect(readFileSync(out, 'utf8')).toMatch(/^PASS/m);
    } finally {
      await oh.stop();
    }
    expect(leftovers()).toEqual([]);
  });

  it('a migrate killed between COMMITTED and RESTORED: the guardian kills the frozen source, never resumes it; the receiver runs the process', async () => {
    const work = tmpDir('tsnap-oh-');
    const oh = await startOtherHost(TSNAP_BIN, ['--dir', join(work, 'in'), '--token', 'sesame', '--restore', '--count', '1', '--stdout', join(work, 'restored.out')]);
    try {
      const p = await startProcess(await compileC('counter'), []);
      const t = startTsnap(['migrate', '--pid', String(p.pid), '--to', `${oh.host}:${oh.port}`, '--token', 'sesame', '--max-iterations', '2'], { TSNAP_TEST_PAUSE_AT: 'migrate-kill-deferred' });
      // The receiver built it live and committed; the source is still frozen, waiting for RESTORED.
      await until(() => { try { return /^State:\s+T/m.test(readFileSync(`/proc/${t.child.pid}/status`, 'utf8')); } catch { return false; } }, 'migrate to reach its pause point');
      expect(readFileSync(`/proc/${p.pid}/status`, 'utf8')).toMatch(/^TracerPid:\s+[1-9]/m);
      const printed = p.lines().length;
      process.kill(t.child.pid!, 'SIGKILL');
      const info = await p.exited;
      expect(info.signal).toBe('SIGKILL');
      // Not one more line: it never ran again on the source.
      expect(p.lines().length).toBe(printed);
      await until(() => oh.events.some((e) => e.includes('"restored"')), 'the restored event');
      expect(oh.hostPid(p.pid)).not.toBeNull();
    } finally {
      await oh.stop();
    }
    expect(leftovers()).toEqual([]);
  });

  it('on one host, a pid held by a zombie is named with its comm and parent', async () => {
    // The parent forks a short child and then never reaps it: a zombie until the parent dies. Not a shell:
    // dash may reap a finished background job before its exec (seen in CI), so the zombie would be gone.
    const script = [
      'import os, sys',
      'pid = os.fork()',
      'if pid == 0: os.execvp("sleep", ["sleep", "0"])',
      'print(pid, flush=True)',
      'os.execvp("sleep", ["sleep", "30"])',
    ].join('\n');
    const parent = spawn('python3', ['-c', script], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      const zombie = await new Promise<number>((resolve) => parent.stdout!.once('data', (d) => resolve(Number(String(d).trim()))));
      await until(() => /^State:\s+Z/m.test(readFileSync(`/proc/${zombie}/status`, 'utf8')) && /^Name:\s+sleep$/m.test(readFileSync(`/proc/${parent.pid}/status`, 'utf8')), 'the zombie and its parent\'s exec');
      expect(pidHolder(zombie)).toBe(`pid ${zombie} is held by a zombie of "sleep", parent ${parent.pid} ("sleep")`);
      expect(pidHolder(parent.pid!)).toMatch(new RegExp(`^pid ${parent.pid} is held by "sleep" \\(running\\), parent ${process.pid} `));
      const told: string[] = [];
      await waitPidsFree([zombie], { timeoutMs: 300, tellAfterMs: 50, onHeld: (_pid, m) => told.push(m) });
      expect(told).toEqual([pidHolder(zombie)]);
    } finally {
      await killPid(parent.pid!);
    }
  });
});

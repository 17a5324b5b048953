/**
 * A process in a group stop (SIGSTOP, SIGTSTP...) is still stopped after
 * dump --leave-running and after restore, and runs on when it gets SIGCONT.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, restoreDetached, useRestoredCleanup } from './helpers/tsnap.js';

useProcessCleanup();
useRestoredCleanup();
afterAll(() => cleanupTmpDirs());

const COUNTER = `
import time, itertools
for i in itertools.count():
    print('TICK %d' % i, flush=True)
    time.sleep(0.02)
`;

const state = (pid: number) => /^State:\s+(\S)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function stopped(pid: number): Promise<void> {
  for (let i = 0; i < 200 && state(pid) !== 'T'; i++) await sleep(5);
  expect(state(pid)).toBe('T');
}

describe('a stopped process', () => {
  for (const sig of ['SIGSTOP', 'SIGTSTP'] as const) {
    it(`stopped by ${sig} stays stopped through dump --leave-running and restore, and runs on after SIGCONT`, async () => {
      const p = await startPython(COUNTER, [], { readyPattern: /TICK 3/ });
      process.kill(p.pid, sig);
      await stopped(p.pid);
      const work = tmpDir('stopped');
      const lr = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'lr'), '--leave-running');
      expect(lr.code, lr.stderr).toBe(0);
      await sleep(100);
      expect(state(p.pid)).toBe('T');
      const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
      expect(d.code, d.stderr).toBe(0);
      const last = p.lines().at(-1)!;
      await p.exited;
      const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
      expect(r.result.code, r.result.stderr).toBe(0);
      await stopped(r.pid);
      await sleep(200);
      expect(state(r.pid)).toBe('T');
      expect(r.lines.filter((l) => l.startsWith('TICK'))).toEqual([]);
      process.kill(r.pid, 'SIGCONT');
      const next = Number(last.split(' ')[1]) + 1;
      await r.waitForLine(new RegExp(`^TICK ${next + 2}$`));
      expect(r.lines.find((l) => l.startsWith('TICK'))).toBe(`TICK ${next}`);
    });
  }
});

/**
 * A target whose fd table never holds still (a thread opening and closing
 * fds in a tight loop): the check before the freeze lists fds that are
 * gone by the time it reads them, and must not fail the dump for it; the
 * frozen read sees a table that no longer moves.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, startTsnap, dumpKillRestore } from './helpers/tsnap.js';
import { ExitCode } from '../src/errors.js';
import { eventually } from './helpers/eventually.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

interface Status { counter: number; rounds: number; bad: number }

async function status(p: { writeLine(s: string): void; waitForLine(re: RegExp, t?: number, from?: number): Promise<string> }, from: number): Promise<Status> {
  p.writeLine('status');
  const m = /counter=(\d+) rounds=(\d+) bad=(\d+)/.exec(await p.waitForLine(/^STATUS/, 5000, from))!;
  return { counter: Number(m[1]), rounds: Number(m[2]), bad: Number(m[3]) };
}

describe('a target that opens and closes fds all the time', () => {
  it('dump --leave-running succeeds 10 times in a row, and the target churns on', async () => {
    const work = tmpDir('tsnap-fdchurn-');
    const p = await startProcess(await compileC('fdchurn'), []);
    for (let i = 0; i < 10; i++) {
      const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, `img${i}`), '--leave-running');
      expect(d.code, `dump ${i}: ${d.stderr}`).toBe(0);
    }
    const s1 = await status(p, p.lines().length);
    const s2 = await eventually(() => status(p, p.lines().length), (s) => s.rounds > s1.rounds && s.counter > s1.counter, 5000, 'both threads running on');
    expect(s2.bad).toBe(0);
  });

  it('a kill-mode dump restores a process that churns on', async () => {
    const work = tmpDir('tsnap-fdchurn-');
    const p = await startProcess(await compileC('fdchurn'), []);
    const before = await status(p, 0);
    const r = await dumpKillRestore(p, work);
    const s1 = await status(r, 0);
    expect(s1.counter).toBeGreaterThanOrEqual(before.counter);
    const s2 = await eventually(() => status(r, r.lines.length), (s) => s.rounds > s1.rounds && s.counter > s1.counter, 5000, 'both threads running on');
    expect(s2.bad).toBe(0);
  });

  it('an fd restore cannot bring back is still refused before the freeze, churn or not', async () => {
    const work = tmpDir('tsnap-fdchurn-');
    const p = await startProcess(await compileC('fdchurn'), ['setown']);
    const d = await startTsnap(['dump', '--pid', String(p.pid), '--dir', join(work, 'img')], { TSNAP_TRACE: '1' }).done;
    expect(d.code, d.stderr).toBe(ExitCode.unsupported);
    expect(d.stderr).toContain(`fd ${p.readyInfo.owned} of process ${p.pid} sends its signals (F_SETOWN) to process ${process.pid}, which is not part of the dump`);
    expect(d.stderr).not.toContain('dump: freezing');
    const s1 = await status(p, p.lines().length);
    await eventually(() => status(p, p.lines().length), (s) => s.rounds > s1.rounds, 5000, 'the target churning on');
  });
});

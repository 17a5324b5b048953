/**
 * The state a dump reads while the target is frozen is the state of the
 * freeze instant, however fast the target changes it up to that instant:
 * a process flips a VMA's flags (madvise HUGEPAGE / NOHUGEPAGE, which
 * /proc/PID/maps does not show) as fast as it can, right up to the freeze,
 * and checks after each flip that the kernel shows what its memory says it
 * last set. Restored from the image, it goes on checking: image flags read
 * at another instant than its memory would show as BAD. 40 MiB resident:
 * the path for large processes (smaps read on a thread of its own, beside
 * the batched remote syscalls).
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, restoreDetached } from './helpers/tsnap.js';
import { waitPidsFree } from './helpers/processes.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

describe('frozen state', () => {
  it('VmFlags changed in place right up to the freeze are those of the freeze instant, twice over', async () => {
    const bin = await compileC('flagflipper');
    const p = await startProcess(bin, ['40']);
    await p.waitForLine(/^TICK/, 10_000);
    const work = tmpDir('frozenstate');
    let pid = p.pid;
    let lines: () => string[] = () => p.lines();
    for (let round = 1; round <= 2; round++) {
      const dir = join(work, String(round));
      const d = await tsnap('dump', '--pid', String(pid), '--dir', dir);
      expect(d.code, d.stderr).toBe(0);
      await waitPidsFree([pid], 10_000);
      const r = await restoreDetached(dir, join(work, `pid${round}`));
      expect(r.result.code, r.result.stderr).toBe(0);
      // Rounds after the restore: every one checked the flags its memory names.
      await r.waitForLine(/^TICK/, 10_000);
      const mark = r.lines.length;
      await r.waitForLine(/^TICK/, 10_000, mark);
      expect(r.lines.filter((l) => l.startsWith('BAD')), `round ${round}`).toEqual([]);
      pid = r.pid;
      lines = () => r.lines;
    }
    expect(lines().some((l) => l.startsWith('TICK'))).toBe(true);
  });
});

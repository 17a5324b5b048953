/**
 * VmFlags of a large process are read before the freeze and kept only when
 * nothing could have changed them by the freeze (src/proc/vmflags-watch.ts).
 * A process whose flags stay put is dumped with the early read; one that
 * flips a flag in place after the read (held there: TSNAP_TEST_HOLD_AT)
 * must get the flags of the freeze instant, read frozen.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { startTsnap, restoreDetached, useRestoredCleanup } from './helpers/tsnap.js';
import { killPid, waitPidsFree } from './helpers/processes.js';

useProcessCleanup();
useRestoredCleanup();
afterAll(() => cleanupTmpDirs());

async function restoredFlags(dir: string, work: string, pid: number): Promise<string> {
  killPid(pid);
  await waitPidsFree([pid]);
  const r = await restoreDetached(dir, join(work, 'pid'));
  expect(r.result.code, r.result.stderr).toBe(0);
  r.writeLine('check');
  return r.waitForLine(/^FLAGS/, 10_000);
}

describe('VmFlags read before the freeze', () => {
  it('are used when the process changed none: its restored flags are those it had', async () => {
    const work = tmpDir('tsnap-vmflags-');
    const p = await startProcess(await compileC('flagonce'), ['40']);
    const dir = join(work, 'img');
    const d = await startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--no-cow'], { TSNAP_TRACE: '1' }).done;
    expect(d.code, d.stderr).toBe(0);
    // Where perf events or tracefs are not to be had, the flags are read frozen: both are right.
    if (!/VmFlags from before the freeze/.test(d.stderr)) console.log(`VmFlags read frozen here: ${/VmFlags read frozen \(([^)]*)\)/.exec(d.stderr)?.[1]}`);
    expect(await restoredFlags(dir, work, p.pid)).toBe('FLAGS hg');
  });

  it('are not used when the process flipped one in place after the read: the image has the flags of the freeze instant', async () => {
    const work = tmpDir('tsnap-vmflags-');
    const p = await startProcess(await compileC('flagonce'), ['40']);
    const dir = join(work, 'img');
    const go = join(work, 'go');
    const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--no-cow'], { TSNAP_TEST_HOLD_AT: `flags-read:${go}`, TSNAP_TRACE: '1' });
    await waitForStderr(t.child, /holding at flags-read/);
    const mark = p.lines().length;
    p.writeLine('flip');
    await p.waitForLine(/^FLIPPED/, 10_000, mark);
    writeFileSync(go, '');
    const d = await t.done;
    expect(d.code, d.stderr).toBe(0);
    expect(d.stderr).not.toMatch(/VmFlags from before the freeze/);
    expect(await restoredFlags(dir, work, p.pid)).toBe('FLAGS nh');
  });
});

function waitForStderr(child: { stderr: NodeJS.ReadableStream | null }, re: RegExp): Promise<void> {
  return new Promise((resolve, reject) => {
    let text = '';
    const t = setTimeout(() => reject(new Error(`timeout waiting for ${re} on tsnap's stderr: ${text}`)), 20_000);
    child.stderr!.on('data', (d) => { text += d; if (re.test(text)) { clearTimeout(t); resolve(); } });
  });
}

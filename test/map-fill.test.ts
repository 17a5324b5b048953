/**
 * The one-copy fill (src/restore/map-fill.ts): an uncompressed image of
 * 64 MiB, restored from a read-only mapping of its pages files (on the pool
 * in three lanes (the default) or one, on tsnap's thread with TSNAP_FILL_MAP_LANES=0, with the
 * task populating ahead), comes back intact
 * by the restored process's own checksum; a chunk damaged deep in either
 * pages file is refused in one line, with nothing left running.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, restoreDetached, killPid } from './helpers/tsnap.js';
import { leftRestoreHelpers } from './helpers/processes.js';
import { ExitCode } from '../src/errors.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

describe('restore from a mapping of the pages files', () => {
  it('64 MiB, uncompressed: intact on the pool, on the thread, in one lane, with populates; a damaged chunk in pages or pages.1 refused', async () => {
    const work = tmpDir('tsnap-map-fill-');
    const p = await startProcess(await compileC('bigmem'), ['read', '64']);
    const sum = p.readyInfo.sum;
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    for (const env of [{}, { TSNAP_FILL_MAP_LANES: '0' }, { TSNAP_FILL_MAP_LANES: '1', TSNAP_FILL_MAP_BATCH: '3' }, { TSNAP_FILL_MAP_TASK_POPULATE: '1' }] as Record<string, string>[]) {
      const r = await restoreDetached(dir, join(work, 'pid'), ['--new-pid'], { env });
      expect(r.result.code, r.result.stderr).toBe(0);
      r.writeLine('');
      expect(await r.waitForLine(/^sum=/, 20_000)).toBe(`sum=${sum}`);
      expect(await r.waitForLine(/^(PASS|FAIL)/, 20_000)).toBe('PASS');
      await killPid(r.pid);
    }
    for (const file of ['pages', 'pages.1']) {
      const bad = join(work, `bad-${file}`);
      execFileSync('cp', ['-a', dir, bad]);
      const path = join(bad, file);
      // A byte in the middle of the file: well past the first chunk, inside one of the native call's later pieces.
      const at = Math.floor(statSync(path).size / 2) + 12345;
      execFileSync('python3', ['-c', `f=open('${path}','r+b'); f.seek(${at}); b=f.read(1); f.seek(${at}); f.write(bytes([b[0]^0xff]))`]);
      for (const env of [{}, { TSNAP_FILL_MAP_LANES: '0' }, { TSNAP_FILL_MAP_LANES: '1' }] as Record<string, string>[]) {
        const r = await restoreDetached(bad, join(work, 'pid'), ['--new-pid'], { env });
        expect(r.result.code, r.result.stderr).toBe(ExitCode.badImage);
        expect(r.result.stderr).toMatch(new RegExp(`${file.replace('.', '\\.')}: chunk \\d+ checksum mismatch`));
        expect(r.result.stderr.trim().split('\n')).toHaveLength(1);
        expect(existsSync(`/proc/${p.pid}`)).toBe(false);
      }
    }
    expect(await leftRestoreHelpers()).toEqual([]);
  });
});

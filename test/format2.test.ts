/**
 * Image format 2 (two pages files: `pages` and `pages.1`, the one-copy
 * dump's second splicing thread) through every command that reads or
 * writes images: show, verify, squash, restore (eager, --lazy), chains
 * whose levels mix formats 1 and 2, and damaged or swapped `pages.1`.
 * Real processes and real images; the restored process checks itself.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { copyFileSync, cpSync, existsSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync, truncateSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, startTsnap, restoreDetached, readImage } from './helpers/tsnap.js';
import { isGone, killPid, tracerOf, waitPidsFree } from './helpers/processes.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

/** The format version in the header of `file`. */
const headerVersion = (file: string): number => readFileSync(file).readUInt16LE(8);

/** Forces the split on a copy under the 64 MiB floor (and the one-copy path under its 4 MiB one). */
const SPLIT = { TSNAP_SPLICE: 'always', TSNAP_SPLICE_FILES: '2' };
const ONE = { TSNAP_SPLICE: 'always', TSNAP_SPLICE_FILES: '1' };

async function pausedAt(t: { child: { pid?: number }; done: Promise<{ stderr: string }> }): Promise<void> {
  const pid = t.child.pid!;
  for (let i = 0; i < 4000; i++) {
    let st = '';
    try { st = readFileSync(`/proc/${pid}/status`, 'utf8'); } catch { throw new Error(`tsnap ${pid} exited before its pause point: ${(await t.done).stderr}`); }
    if (/^State:\s+T/m.test(st)) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`tsnap ${pid} never reached its pause point`);
}

/** A SIGKILLed tsnap's target is put back by its guardian once it sees tsnap gone (10 s: a loaded machine runs it late). */
async function eventuallyUntraced(pid: number): Promise<void> {
  const state = () => /^State:\s+(\S)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1];
  for (let i = 0; i < 1000 && (tracerOf(pid) !== 0 || /[Tt]/.test(state())); i++) await new Promise((r) => setTimeout(r, 10));
  expect([tracerOf(pid), state()]).toEqual([0, expect.not.stringMatching(/[Tt]/)]);
}

function fdsAndMaps(pid: number): { fds: string[]; maps: string } {
  return { fds: readdirSync(`/proc/${pid}/fd`).sort(), maps: readFileSync(`/proc/${pid}/maps`, 'utf8') };
}

describe('image format 2 (pages and pages.1)', () => {
  it('show, verify and squash read it; the squashed image is one pages file and format 1 throughout, and restores (a stray pages.1 beside it unread)', async () => {
    const work = tmpDir('tsnap-fmt2-');
    const p = await startProcess(await compileC('bigmem'), ['read', '72']);
    const sum = p.readyInfo.sum;
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    expect(readImage(dir).inventory.formatVersion).toBe(2);
    const show = await tsnap('show', dir);
    expect(show.code, show.stderr).toBe(0);
    expect(show.stdout).toMatch(/format v2/);
    const json = await tsnap('show', '--json', dir);
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout).inventory.files['pages.1'].length).toBeGreaterThan(30 << 20);
    const sq = join(work, 'sq');
    const s = await tsnap('squash', dir, '-o', sq);
    expect(s.code, s.stderr).toBe(0);
    // Only images with a pages.1 are format 2: an older tsnap reads the squashed one.
    expect(existsSync(join(sq, 'pages.1'))).toBe(false);
    const img = readImage(sq);
    expect(img.inventory.formatVersion).toBe(1);
    expect(img.inventory.files['pages.1']).toBeUndefined();
    expect(img.pagemap.chunks.every((c) => c.file === undefined)).toBe(true);
    for (const f of ['inventory', 'pagemap', 'pages', 'process']) expect(headerVersion(join(sq, f)), f).toBe(1);
    expect((await tsnap('verify', sq)).code).toBe(0);
    // A stray pages.1 beside a format 1 image (its inventory does not record it) is not read: the image restores as it is.
    copyFileSync(join(dir, 'pages.1'), join(sq, 'pages.1'));
    expect((await tsnap('verify', sq)).code).toBe(0);
    const back = await restoreDetached(sq, join(work, 'pid'));
    expect(back.result.code, back.result.stderr).toBe(0);
    back.writeLine('');
    expect(await back.waitForLine(/^sum=/, 20_000)).toBe(`sum=${sum}`);
    expect(await back.waitForLine(/^(PASS|FAIL)/, 20_000)).toBe('PASS');
  });

  it('a missing, truncated, swapped or corrupted pages.1: verify and restore refuse it in one line (exit 7), nothing is restored; the intact image then restores', async () => {
    const work = tmpDir('tsnap-fmt2-');
    const p = await startProcess(await compileC('dirtier'), ['2048']);
    const dir = join(work, 'img');
    const d = await startTsnap(['dump', '--pid', String(p.pid), '--dir', dir], SPLIT).done;
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await waitPidsFree([p.pid]);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    for (const f of readdirSync(dir)) expect(statSync(join(dir, f)).mode & 0o777, f).toBe(0o600);
    const damages: [string, (at: string) => void, RegExp][] = [
      ['missing', (at) => rmSync(join(at, 'pages.1')), /pages\.1: missing/],
      ['truncated', (at) => truncateSync(join(at, 'pages.1'), statSync(join(at, 'pages.1')).size - 4096), /pages\.1: truncated/],
      ['swapped', (at) => {
        renameSync(join(at, 'pages'), join(at, 'x'));
        renameSync(join(at, 'pages.1'), join(at, 'pages'));
        renameSync(join(at, 'x'), join(at, 'pages.1'));
      }, /swapped with pages/],
      // Told by its header before any length or CRC is looked at (as a copy whose lengths agree would be).
      ['pages.1 as pages too', (at) => copyFileSync(join(at, 'pages.1'), join(at, 'pages')), /pages: its header says format 2/],
      ['a byte of pages.1 flipped', (at) => {
        const fd = openSync(join(at, 'pages.1'), 'r+');
        writeSync(fd, Buffer.from([0x5a]), 0, 1, 32 + 5000);
        closeSync(fd);
      }, /pages\.1: chunk \d+ checksum mismatch/],
    ];
    for (const [name, damage, why] of damages) {
      const at = join(work, name.replace(/ /g, '-'));
      cpSync(dir, at, { recursive: true });
      damage(at);
      const v = await tsnap('verify', at);
      expect(v.code, `${name}: ${v.stderr}`).toBe(7);
      expect(v.stderr.trim().split('\n'), name).toHaveLength(1);
      expect(v.stderr, name).toMatch(why);
      const r = await restoreDetached(at, join(work, `${name}.pid`));
      expect(r.result.code, `${name}: ${r.result.stderr}`).toBe(7);
      expect(r.result.stderr.trim().split('\n'), name).toHaveLength(1);
      expect(r.result.stderr, name).toMatch(why);
      expect(isGone(p.pid), `${name}: nothing half-restored`).toBe(true);
      rmSync(at, { recursive: true, force: true });
    }
    const back = await restoreDetached(dir, join(work, 'pid'));
    expect(back.result.code, back.result.stderr).toBe(0);
    back.writeLine('check');
    expect(await back.waitForLine(/^(PASS|FAIL)/, 10_000)).toBe('PASS');
  });

  it('chains mixing formats: a format 1 pre-dump under a format 2 dump, and a format 2 dump under a format 1 one, restore eagerly and --lazy', async () => {
    const work = tmpDir('tsnap-fmt2-');
    const fx = await compileC('dirtier');
    const run = async (name: string, parentEnv: Record<string, string> | 'predump', childEnv: Record<string, string>, versions: [number, number]) => {
      const p = await startProcess(fx, ['2048']);
      const parent = join(work, `${name}-1`);
      const pd = parentEnv === 'predump'
        ? await tsnap('pre-dump', '--pid', String(p.pid), '--dir', parent)
        : await startTsnap(['dump', '--pid', String(p.pid), '--dir', parent, '--leave-running', '--no-cow'], parentEnv).done;
      expect(pd.code, pd.stderr).toBe(0);
      // Pages rewritten after the parent (more than a chunk's worth, for a chunk in each file): the child stores them, the parent the rest.
      for (const from of [0, 1000, 1600]) {
        const n = p.lines().length;
        p.writeLine(`w ${Array.from({ length: 400 }, (_, i) => from + i).join(' ')}`);
        await p.waitForLine(/^DONE/, 10_000, n);
      }
      const child = join(work, `${name}-2`);
      const dd = await startTsnap(['dump', '--pid', String(p.pid), '--dir', child, '--parent', parent], childEnv).done;
      expect(dd.code, dd.stderr).toBe(0);
      await p.exited;
      expect([readImage(parent).inventory.formatVersion, readImage(child).inventory.formatVersion], name).toEqual(versions);
      expect((await tsnap('verify', child)).code, name).toBe(0);
      for (const extra of [[], ['--lazy']]) {
        await waitPidsFree([p.pid]);
        const r = await restoreDetached(child, join(work, `${name}${extra.join('')}.pid`), extra);
        expect(r.result.code, `${name} ${extra}: ${r.result.stderr}`).toBe(0);
        r.writeLine('check');
        expect(await r.waitForLine(/^(PASS|FAIL)/, 20_000), `${name} ${extra}`).toBe('PASS');
        await killPid(r.pid);
      }
      await waitPidsFree([p.pid]);
      // Folded: one pages file, format 1, and the same process.
      const sq = join(work, `${name}-sq`);
      const s = await tsnap('squash', child, '-o', sq);
      expect(s.code, s.stderr).toBe(0);
      expect(readImage(sq).inventory.formatVersion, name).toBe(1);
      const r = await restoreDetached(sq, join(work, `${name}-sq.pid`));
      expect(r.result.code, `${name} squashed: ${r.result.stderr}`).toBe(0);
      r.writeLine('check');
      expect(await r.waitForLine(/^(PASS|FAIL)/, 20_000), `${name} squashed`).toBe('PASS');
      await killPid(r.pid);
    };
    await run('predump-then-split', 'predump', SPLIT, [1, 2]);
    await run('split-then-one', SPLIT, ONE, [2, 1]);
  }, 120_000);

  it('from 64 MiB, --cow and --compress lz4 stay format 1 (one pages file)', async () => {
    const work = tmpDir('tsnap-fmt2-');
    const p = await startProcess(await compileC('bigmem'), ['read', '72']);
    for (const [name, extra] of [['cow', ['--cow']], ['lz4', ['--no-cow', '--compress', 'lz4']]] as const) {
      const dir = join(work, name);
      const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', ...extra);
      expect(r.code, r.stderr).toBe(0);
      expect(existsSync(join(dir, 'pages.1')), name).toBe(false);
      expect(readImage(dir).inventory.formatVersion, name).toBe(1);
    }
    const n = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000, n)).toBe('PASS');
  });

  it('a disk that fills during the two files\' writes: exit 8 naming the file, nothing left on it, the target runs on; a tsnap killed in the pool\'s splice leaves the target as it was and no image a reader accepts', async () => {
    const work = tmpDir('tsnap-fmt2-');
    const p = await startProcess(await compileC('bigmem'), ['read', '24']);
    const before = fdsAndMaps(p.pid);
    const mnt = tmpDir('tsnap-fmt2-full-');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tsnap-test', mnt]);
    try {
      // Either thread may meet the full disk first: both files are written at once.
      const r = await startTsnap(['dump', '--pid', String(p.pid), '--dir', join(mnt, 'img')], { TSNAP_SPLICE_FILES: '2' }).done;
      expect(r.code, r.stderr).toBe(8);
      expect(r.stderr).toMatch(/no space left on the device writing \S+\/img\/pages(\.1)?;/);
      expect(readdirSync(mnt)).toEqual([]);
    } finally {
      execFileSync('umount', [mnt]);
    }
    expect(tracerOf(p.pid)).toBe(0);
    expect(fdsAndMaps(p.pid)).toEqual(before);
    const dir = join(work, 'killed');
    const k = await startTsnap(['dump', '--pid', String(p.pid), '--dir', dir], { TSNAP_SPLICE_FILES: '2', TSNAP_FAULT_AT: 'splice-pooled' }).done;
    expect(k.signal, k.stderr).toBe('SIGKILL');
    // Its pages files stay (no handler ran), without the inventory that would commit them.
    expect(existsSync(join(dir, 'inventory'))).toBe(false);
    const v = await tsnap('verify', dir);
    expect(v.code, v.stderr).toBe(7);
    await eventuallyUntraced(p.pid);
    expect(fdsAndMaps(p.pid)).toEqual(before);
    const n = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000, n)).toBe('PASS');
  });

  it('SIGTERM while the pool thread splices into pages.1: the abort waits for it; exit 143, no image, the target runs on untraced with nothing of tsnap\'s', async () => {
    const work = tmpDir('tsnap-fmt2-');
    const p = await startProcess(await compileC('bigmem'), ['read', '24']);
    const before = fdsAndMaps(p.pid);
    const dir = join(work, 'img');
    // Kill mode: an abort must leave the target alive all the same.
    const t = startTsnap(['dump', '--pid', String(p.pid), '--dir', dir], { TSNAP_SPLICE_FILES: '2', TSNAP_TEST_PAUSE_AT: 'splice-pooled' });
    await pausedAt(t);
    process.kill(t.child.pid!, 'SIGTERM');
    process.kill(t.child.pid!, 'SIGCONT');
    const r = await t.done;
    expect(r.code, r.stderr).toBe(143);
    expect(r.stderr).toMatch(/interrupted by SIGTERM/);
    expect(existsSync(dir)).toBe(false);
    expect(tracerOf(p.pid)).toBe(0);
    expect(fdsAndMaps(p.pid)).toEqual(before);
    const n = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000, n)).toBe('PASS');
  });
});

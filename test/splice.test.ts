/**
 * The one-copy dump (src/dump/splice-copy.ts): a frozen, uncompressed dump
 * has the target vmsplice its pages into pipes of its own and splices them
 * into the pages file. Judged by the restored process's own checksum, and
 * by the target of a leave-running dump: nothing of tsnap's left in it (no
 * pipe fd, no mapping), its memory intact.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { readdirSync, readFileSync, statSync, existsSync, openSync, closeSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { pipe2, O_NONBLOCK, splicePipes, splicePipesAsync, canSplicePooled, SysError, type PipeSplice } from '../src/sys/index.js';
import { crc32 } from '../src/image/checksum.js';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, startTsnap, restoreDetached, readImage } from './helpers/tsnap.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

function fdsAndMaps(pid: number): { fds: string[]; maps: string } {
  const fds = readdirSync(`/proc/${pid}/fd`).sort().map((fd) => {
    try { return `${fd}:${readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8').split('\n').find((l) => l.startsWith('flags'))}`; } catch { return fd; }
  });
  return { fds, maps: readFileSync(`/proc/${pid}/maps`, 'utf8') };
}

describe('one-copy dump (vmsplice in the target, splice into the pages file)', () => {
  it('kill mode: every page goes through the pipes, and the restored process finds its checksum', async () => {
    const work = tmpDir('tsnap-splice-');
    const p = await startProcess(await compileC('bigmem'), ['read', '24']);
    const sum = p.readyInfo.sum;
    const dir = join(work, 'img');
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(r.code, r.stderr).toBe(0);
    await p.exited;
    const stats = readImage(dir).stats!;
    expect(stats.splice, 'the one-copy path was used').toBeDefined();
    // The region and the rest of the process's written pages, all readable: none the usual way.
    expect(stats.splice!.pagesSpliced).toBe(stats.pagesWritten);
    expect(stats.splice!.trips).toBeGreaterThan(0);
    expect(stats.splice!.crcOn, 'the read-back ran in C on libuv\'s pool').toBe('pool');
    expect((await tsnap('verify', dir)).code).toBe(0);
    const back = await restoreDetached(dir, join(work, 'pid'));
    expect(back.result.code, back.result.stderr).toBe(0);
    back.writeLine('');
    expect(await back.waitForLine(/^sum=/, 20_000)).toBe(`sum=${sum}`);
    expect(await back.waitForLine(/^(PASS|FAIL)/, 20_000)).toBe('PASS');
  });

  it('--leave-running --no-cow: the target keeps no pipe, fd or mapping of tsnap\'s, and runs on intact', async () => {
    const work = tmpDir('tsnap-splice-');
    const p = await startProcess(await compileC('bigmem'), ['read', '8']);
    const before = fdsAndMaps(p.pid);
    const dir = join(work, 'img');
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--no-cow');
    expect(r.code, r.stderr).toBe(0);
    expect(readImage(dir).stats!.splice?.pagesSpliced).toBeGreaterThan(2048);
    expect(fdsAndMaps(p.pid)).toEqual(before);
    const n = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000, n)).toBe('PASS');
  });

  it('unreadable pages (PROT_NONE with data) go the usual way beside the spliced ones; the restored process checks itself', async () => {
    const work = tmpDir('tsnap-splice-');
    const p = await startProcess(await compileC('memstate'), ['read', '6'], { env: { TSNAP_FIXTURE_TMPDIR: work } });
    const dir = join(work, 'img');
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(r.code, r.stderr).toBe(0);
    await p.exited;
    const stats = readImage(dir).stats!;
    expect(stats.splice).toBeDefined();
    expect(stats.pagesSlowPath).toBeGreaterThan(0);
    expect(stats.splice!.pagesSpliced).toBeLessThan(stats.pagesWritten);
    expect(stats.splice!.pagesSpliced).toBeGreaterThan(0);
    const back = await restoreDetached(dir, join(work, 'pid'));
    expect(back.result.code, back.result.stderr).toBe(0);
    back.writeLine('check');
    expect(await back.waitForLine(/^(PASS|FAIL)/, 10_000)).toBe('PASS');
  });

  it('with the CRC thread (TSNAP_SPLICE_CRC_THREAD=1, past 64 MiB) every chunk checks, and the target runs on intact', async () => {
    const work = tmpDir('tsnap-splice-');
    const p = await startProcess(await compileC('bigmem'), ['read', '72']);
    const dir = join(work, 'img');
    const r = await startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--no-cow'], { TSNAP_SPLICE_CRC_THREAD: '1' }).done;
    expect(r.code, r.stderr).toBe(0);
    expect(readImage(dir).stats!.splice!.pagesSpliced).toBe(readImage(dir).stats!.pagesWritten);
    expect(readImage(dir).stats!.splice!.crcOn).toBe('thread');
    expect((await tsnap('verify', dir)).code).toBe(0);
    const n = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000, n)).toBe('PASS');
  });

  it('the read-back on libuv\'s pool gives every chunk the CRC the main thread gives it, and the target runs on intact', async () => {
    const work = tmpDir('tsnap-splice-');
    const p = await startProcess(await compileC('bigmem'), ['read', '20']);
    const crcs: Record<string, number[]> = {};
    // pool: one file (20 MiB), every chunk by the pool's reader; hot: two files, each chunk read back by the thread
    // that spliced it, right after (crcsSpliced); reader: two files, the pool's reader; inline: the main thread.
    const cases: [string, Record<string, string>][] = [
      ['pool', {}], ['hot', { TSNAP_SPLICE_FILES: '2' }], ['reader', { TSNAP_SPLICE_FILES: '2', TSNAP_SPLICE_HOT_CRC: '0' }], ['inline', { TSNAP_SPLICE_CRC: 'inline' }],
    ];
    for (const [name, env] of cases) {
      const dir = join(work, name);
      const r = await startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--no-cow'], env).done;
      expect(r.code, r.stderr).toBe(0);
      const img = readImage(dir);
      expect(img.stats!.splice!.crcOn, name).toBe(name === 'inline' ? 'inline' : 'pool');
      if (name === 'hot') expect(img.stats!.splice!.crcsSpliced, name).toBeGreaterThan(15);
      else expect(img.stats!.splice!.crcsSpliced, name).toBeUndefined();
      expect(img.pagemap.chunks.length).toBeGreaterThan(20);
      crcs[name] = img.pagemap.chunks.map((c) => c.crc32);
      expect((await tsnap('verify', dir)).code, name).toBe(0);
    }
    // The target sits in read(): the big region, and so every chunk but its stack's, is the same in both dumps.
    for (const other of ['hot', 'reader', 'inline']) {
      const same = crcs.pool.filter((c, i) => c === crcs[other][i]).length;
      expect(same, other).toBeGreaterThanOrEqual(crcs.pool.length - 2);
    }
    const n = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000, n)).toBe('PASS');
  });

  it('past 64 MiB the page data is split over pages and pages.1 (format 2, every other chunk there); verify passes and the restored process finds its checksum', async () => {
    const work = tmpDir('tsnap-splice-');
    const p = await startProcess(await compileC('bigmem'), ['read', '72']);
    const sum = p.readyInfo.sum;
    const dir = join(work, 'img');
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(r.code, r.stderr).toBe(0);
    await p.exited;
    const img = readImage(dir);
    expect(img.stats!.splice!.files).toBe(2);
    expect(img.stats!.splice!.pagesSpliced).toBe(img.stats!.pagesWritten);
    expect(img.inventory.formatVersion).toBe(2);
    const files = img.pagemap.chunks.map((c) => c.file ?? 0);
    expect(files.slice(0, 6)).toEqual([0, 1, 0, 1, 0, 1]);
    expect(img.inventory.files['pages.1'].length).toBe(img.pagemap.chunks.filter((c) => c.file === 1).reduce((n, c) => n + c.storedLength, 0));
    expect(statSync(join(dir, 'pages.1')).mode & 0o777).toBe(0o600);
    expect((await tsnap('verify', dir)).code).toBe(0);
    const back = await restoreDetached(dir, join(work, 'pid'));
    expect(back.result.code, back.result.stderr).toBe(0);
    back.writeLine('');
    expect(await back.waitForLine(/^sum=/, 20_000)).toBe(`sum=${sum}`);
    expect(await back.waitForLine(/^(PASS|FAIL)/, 20_000)).toBe('PASS');
  });

  it('two files give every chunk the CRC one file gives it (TSNAP_SPLICE_FILES=1 keeps format 1), and the target runs on intact', async () => {
    const work = tmpDir('tsnap-splice-');
    const p = await startProcess(await compileC('bigmem'), ['read', '20']);
    const before = fdsAndMaps(p.pid);
    const crcs: Record<string, number[]> = {};
    for (const files of ['2', '1']) {
      const dir = join(work, files);
      const r = await startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--no-cow'], { TSNAP_SPLICE_FILES: files }).done;
      expect(r.code, r.stderr).toBe(0);
      const img = readImage(dir);
      expect(img.stats!.splice!.files ?? 1, files).toBe(Number(files));
      expect(img.inventory.formatVersion, files).toBe(Number(files));
      expect(existsSync(join(dir, 'pages.1')), files).toBe(files === '2');
      crcs[files] = img.pagemap.chunks.map((c) => c.crc32);
      expect((await tsnap('verify', dir)).code, files).toBe(0);
    }
    // The target sits in read(): every chunk but its stack's is the same in both dumps.
    expect(crcs['2'].length).toBe(crcs['1'].length);
    expect(crcs['2'].filter((c, i) => c === crcs['1'][i]).length).toBeGreaterThanOrEqual(crcs['2'].length - 2);
    expect(fdsAndMaps(p.pid)).toEqual(before);
    const n = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000, n)).toBe('PASS');
  });

  it('two files with unreadable pages (PROT_NONE with data) beside the spliced ones: verify passes, the restored process checks itself', async () => {
    const work = tmpDir('tsnap-splice-');
    const p = await startProcess(await compileC('memstate'), ['read', '6'], { env: { TSNAP_FIXTURE_TMPDIR: work } });
    const dir = join(work, 'img');
    const r = await startTsnap(['dump', '--pid', String(p.pid), '--dir', dir], { TSNAP_SPLICE_FILES: '2' }).done;
    expect(r.code, r.stderr).toBe(0);
    await p.exited;
    const img = readImage(dir);
    expect(img.stats!.splice!.files).toBe(2);
    expect(img.stats!.pagesSlowPath).toBeGreaterThan(0);
    expect((await tsnap('verify', dir)).code).toBe(0);
    const back = await restoreDetached(dir, join(work, 'pid'));
    expect(back.result.code, back.result.stderr).toBe(0);
    back.writeLine('check');
    expect(await back.waitForLine(/^(PASS|FAIL)/, 10_000)).toBe('PASS');
  });

  it('lz4 and TSNAP_SPLICE=0 keep the two-copy path', async () => {
    const work = tmpDir('tsnap-splice-');
    const p = await startProcess(await compileC('bigmem'), ['read', '4']);
    const cases: [string, string[], Record<string, string>][] = [['lz4', ['--compress', 'lz4'], {}], ['off', [], { TSNAP_SPLICE: '0' }]];
    for (const [name, extra, env] of cases) {
      const dir = join(work, name);
      const r = await startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--no-cow', ...extra], env).done;
      expect(r.code, r.stderr).toBe(0);
      expect(readImage(dir).stats!.splice, name).toBeUndefined();
    }
    const n = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000, n)).toBe('PASS');
  });
});

describe('tsnap_splice_pipes (the C loop the pool thread runs for pages.1)', () => {
  /** Non-blocking pipes (as the dump's read ends are), each holding `data`. */
  const filled = (datas: Buffer[]): [number, number][] => datas.map((d) => {
    const [r, w] = pipe2(O_NONBLOCK);
    expect(writeSync(w, d)).toBe(d.length);
    return [r, w];
  });
  const closeAll = (fds: number[]) => { for (const fd of fds) closeSync(fd); };
  const calls = [['on this thread', async (fd: number, jobs: PipeSplice[], rfd: number, buf: Buffer | null) => splicePipes(fd, jobs, rfd, buf)],
    ['on the pool', splicePipesAsync]] as const;

  it('moves each pipe to its offset and reads back the CRCs asked for, through a buffer smaller than a piece', async () => {
    expect(canSplicePooled()).toBe(true);
    const work = tmpDir('tsnap-splice-c-');
    for (const [how, call] of calls) {
      const datas = [randomBytes(40_000), randomBytes(65_536), randomBytes(4096)];
      const pipes = filled(datas);
      const path = join(work, how.replace(/ /g, '-'));
      const fd = openSync(path, 'w', 0o600);
      const rfd = openSync(path, 'r');
      try {
        const at = [32, 32 + 40_000, 32 + 40_000 + 65_536];
        const jobs = pipes.map(([r], i) => ({ pipe: r, position: at[i], len: datas[i].length, crc: i !== 1 }));
        const crcs = await call(fd, jobs, rfd, Buffer.alloc(3000));
        expect(crcs, how).toEqual([crc32(datas[0]), null, crc32(datas[2])]);
        expect(readFileSync(path).subarray(32).equals(Buffer.concat(datas)), how).toBe(true);
      } finally {
        closeAll([fd, rfd, ...pipes.flat()]);
      }
    }
  });

  it('a pipe holding less than its job says (a miscounted vmsplice): a SysError EIO naming the offset, the bytes there stored, the rest left', async () => {
    const work = tmpDir('tsnap-splice-c-');
    for (const [how, call] of calls) {
      const datas = [randomBytes(8192), randomBytes(8192)];
      const pipes = filled(datas);
      const path = join(work, how.replace(/ /g, '-'));
      const fd = openSync(path, 'w', 0o600);
      try {
        // The first pipe is asked for more than it holds: its splice comes back EAGAIN (non-blocking) once it is dry.
        const jobs = [{ pipe: pipes[0][0], position: 0, len: 12_288 }, { pipe: pipes[1][0], position: 12_288, len: 8192 }];
        const err = await call(fd, jobs, -1, null).then(() => null, (e: unknown) => e);
        expect(err, how).toBeInstanceOf(SysError);
        expect((err as SysError).code, how).toBe('EIO');
        expect((err as SysError).message, how).toMatch(/at 0\b.*ran dry/);
        expect(readFileSync(path).equals(datas[0]), how).toBe(true);
      } finally {
        closeAll([fd, ...pipes.flat()]);
      }
    }
  });

  it('a full disk part way through a splice: a SysError ENOSPC, on either thread', async () => {
    const mnt = tmpDir('tsnap-splice-full-');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tsnap-test', mnt]);
    try {
      for (const [how, call] of calls) {
        const datas = [randomBytes(60_000), randomBytes(60_000)];
        const pipes = filled(datas);
        const path = join(mnt, how.replace(/ /g, '-'));
        const fd = openSync(path, 'w', 0o600);
        try {
          const jobs = [{ pipe: pipes[0][0], position: 0, len: 60_000 }, { pipe: pipes[1][0], position: 60_000, len: 60_000 }];
          const err = await call(fd, jobs, -1, null).then(() => null, (e: unknown) => e);
          expect(err, how).toBeInstanceOf(SysError);
          expect((err as SysError).code, how).toBe('ENOSPC');
        } finally {
          closeAll([fd, ...pipes.flat()]);
          execFileSync('rm', ['-f', path]);
        }
      }
    } finally {
      execFileSync('umount', [mnt]);
    }
  });
});

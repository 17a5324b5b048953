/**
 * restore --lazy: the process runs before its memory is in, and its own
 * checks (checksums, a child's, several threads at once) must pass while
 * the pager is still filling and after it is gone.
 */
import { describe, it, expect, afterAll, afterEach } from 'vitest';
import { readFileSync, openSync, writeSync, closeSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, restoreDetached } from './helpers/tsnap.js';
import { registerPid, isGone, killPid, waitPidsFree } from './helpers/processes.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const helpers: number[] = [];
afterEach(async () => {
  for (const pid of helpers.splice(0)) await killPid(pid);
  delete process.env.TSNAP_LAZY_FILL_DELAY_MS;
});

/**
 * The pager and guard pids tsnap --detach names, registered for cleanup.
 * A fill that ended before the background pager was up leaves no pager (0).
 */
function pagerOf(stderr: string, mustHandOver = true): { pager: number; guard: number } {
  const m = /pager process (\d+) \(guard (\d+)\)/.exec(stderr) ?? (mustHandOver ? null : /lazy fill done by tsnap \(guard (\d+)\)/.exec(stderr));
  expect(m, stderr).not.toBeNull();
  const pager = m!.length > 2 ? Number(m![1]) : 0;
  const guard = Number(m![m!.length - 1]);
  for (const pid of [pager, guard]) if (pid) { registerPid(pid); helpers.push(pid); }
  return { pager, guard };
}

async function until(what: string, ok: () => boolean, ms = 20000): Promise<void> {
  for (let i = 0; i < ms / 20; i++) {
    if (ok()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting until ${what}`);
}

const lazyFlags = (pid: number) => readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n').filter((l) => l.startsWith('VmFlags:') && / um\b/.test(l)).length;

async function dumpAndKill(pid: number, exited: Promise<unknown>, dir: string): Promise<void> {
  const d = await tsnap('dump', '--pid', String(pid), '--dir', dir);
  expect(d.code, d.stderr).toBe(0);
  await exited;
}

describe('tsnap restore --lazy', () => {
  it('a 64 MiB checksummed pattern comes back lazily: the process\'s own checksum is right, then the pager leaves', async () => {
    const work = tmpDir('tsnap-lazy-');
    const p = await startProcess(await compileC('bigmem'), ['read', '64']);
    const sum = /sum=(0x[0-9a-f]+)/.exec(p.readyLine)![1];
    await dumpAndKill(p.pid, p.exited, join(work, 'img'));
    // 1 MiB per 20 ms in the background: the checksum below finds most pages still out.
    process.env.TSNAP_LAZY_FILL_DELAY_MS = '20';
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'), ['--lazy', '--lazy-log', join(work, 'lazy.log')]);
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.result.stderr).not.toMatch(/restore check/);
    const { pager, guard } = pagerOf(r.result.stderr);
    r.writeLine('');
    expect(await r.waitForLine(/^sum=/, 20000)).toBe(`sum=${sum}`);
    await r.waitForLine(/^(PASS|FAIL)/, 20000);
    expect(r.lines).toContain('PASS');
    // Every page in: the pager and the guard are gone, no range is registered any more.
    await until('the pager and the guard exit', () => (!pager || isGone(pager)) && isGone(guard));
    expect(lazyFlags(r.pid)).toBe(0);
    const mark = r.lines.length;
    r.writeLine('');
    await r.waitForLine(/^(PASS|FAIL)/, 20000, mark);
    expect(r.lines.slice(mark)).toContain('PASS');
    expect(readFileSync(join(work, 'lazy.log'), 'utf8')).not.toMatch(/kill|cannot/);
  });

  it('threads fault at once, a child forked mid-fill, mremap and MADV_DONTNEED: every check passes', async () => {
    const work = tmpDir('tsnap-lazy-');
    const p = await startProcess(await compileC('lazytouch'), ['16', '4']);
    await dumpAndKill(p.pid, p.exited, join(work, 'img'));
    // A slow background fill (1 MiB per 150 ms): the commands below run while most pages are still out.
    process.env.TSNAP_LAZY_FILL_DELAY_MS = '150';
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'), ['--lazy', '--lazy-log', join(work, 'lazy.log')]);
    expect(r.result.code, r.result.stderr).toBe(0);
    const { pager } = pagerOf(r.result.stderr);
    expect(lazyFlags(r.pid)).toBeGreaterThan(0);
    for (const cmd of ['fork', 'dontneed', 'remap', 'check', 'fork']) {
      const mark = r.lines.length;
      r.writeLine(cmd);
      const got = await r.waitForLine(new RegExp(`^(${cmd.toUpperCase()}|CHECK) `), 20000, mark);
      expect(got, readFileSync(join(work, 'lazy.log'), 'utf8')).toBe(`${cmd === 'check' ? 'CHECK' : cmd.toUpperCase()} PASS`);
      // Still filling: the first fork came before the background fill could end.
      if (mark === 0) expect(isGone(pager)).toBe(false);
    }
    await until('the pager exits', () => isGone(pager));
    const mark = r.lines.length;
    r.writeLine('check');
    expect(await r.waitForLine(/^CHECK /, 20000, mark)).toBe('CHECK PASS');
  });

  it('a killed pager: the guard kills the process (it would read zeros) and says so in the log', async () => {
    const work = tmpDir('tsnap-lazy-');
    const p = await startProcess(await compileC('bigmem'), ['read', '16']);
    await dumpAndKill(p.pid, p.exited, join(work, 'img'));
    process.env.TSNAP_LAZY_FILL_DELAY_MS = '1000';
    const log = join(work, 'lazy.log');
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'), ['--lazy', '--lazy-log', log]);
    expect(r.result.code, r.result.stderr).toBe(0);
    const { pager, guard } = pagerOf(r.result.stderr);
    process.kill(pager, 'SIGKILL');
    await until('the restored process is killed', () => isGone(r.pid));
    await until('the guard exits', () => isGone(guard));
    expect(readFileSync(log, 'utf8')).toMatch(new RegExp(`pager died before the fill ended: killing process ${r.pid}`));
    expect(r.lines).not.toContain('FAIL');
  });

  it('a process tree (dump --tree): each process gets its own uffd, the tree keeps checking itself', async () => {
    const work = tmpDir('tsnap-lazy-');
    const p = await startProcess(await compileC('tree'), []);
    const kids = [Number(p.readyInfo.child1), Number(p.readyInfo.child2)];
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await waitPidsFree([p.pid, ...kids]);
    process.env.TSNAP_LAZY_FILL_DELAY_MS = '50';
    const r = await restoreDetached(dir, join(work, 'pid'), ['--lazy', '--lazy-log', join(work, 'lazy.log')]);
    expect(r.result.code, r.result.stderr).toBe(0);
    const { pager, guard } = pagerOf(r.result.stderr, false);
    const status = async () => {
      const mark = r.lines.length;
      r.writeLine('status');
      return /bad=(\d+)/.exec(await r.waitForLine(/^STATUS/, 20000, mark))![1];
    };
    expect(await status()).toBe('0');
    await until('the pager and the guard exit', () => (!pager || isGone(pager)) && isGone(guard));
    expect(await status()).toBe('0');
    expect(readFileSync(join(work, 'lazy.log'), 'utf8')).not.toMatch(/kill|cannot/);
    for (const k of kids) await killPid(k);
  });

  it('an image that goes bad mid-fill: the pager gives up, the guard kills the process, the log names the chunk', async () => {
    const work = tmpDir('tsnap-lazy-');
    const p = await startProcess(await compileC('bigmem'), ['read', '16']);
    const dir = join(work, 'img');
    await dumpAndKill(p.pid, p.exited, dir);
    process.env.TSNAP_LAZY_FILL_DELAY_MS = '1000';
    const log = join(work, 'lazy.log');
    const r = await restoreDetached(dir, join(work, 'pid'), ['--lazy', '--lazy-log', log]);
    expect(r.result.code, r.result.stderr).toBe(0);
    const { guard } = pagerOf(r.result.stderr);
    // Damage the far end of the pages file, which the slow fill has not read yet.
    const pages = join(dir, 'pages');
    const fd = openSync(pages, 'r+');
    writeSync(fd, Buffer.alloc(4096, 0xa5), 0, 4096, statSync(pages).size - 8192);
    closeSync(fd);
    r.writeLine(''); // the checksum touches every page
    await until('the restored process is killed', () => isGone(r.pid));
    await until('the guard exits', () => isGone(guard));
    const text = readFileSync(log, 'utf8');
    expect(text).toMatch(/chunk \d+ (checksum mismatch|does not decompress)/);
    expect(text).toMatch(new RegExp(`gave up: killing process ${r.pid}`));
    expect(r.lines).not.toContain('PASS');
    expect(r.lines).not.toContain('FAIL');
  });
});

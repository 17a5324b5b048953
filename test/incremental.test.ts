/**
 * Incremental dumps on real processes: uffd-wp tracking across separate
 * tsnap runs, deltas holding exactly the written pages, layout changes
 * between rounds, a writer racing the scans, and tracking that is lost,
 * reused or removed. Every chain is restored and the process checks itself.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { readFileSync, readdirSync, readlinkSync, rmSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs, parseHex, type Running } from './helpers/fixtures.js';
import { tsnap, restoreDetached, readImage, storedPageSet } from './helpers/tsnap.js';
import { readMetaFile, writeMetaFile } from '../src/image/metadata.js';
import { FileKind, PageWhere, type Inventory } from '../formats/schema.js';
import { findHolders } from '../src/track/untrack.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const P = 4096;

async function cmd(p: Running, line: string, reply: RegExp): Promise<string> {
  const n = p.lines().length;
  p.writeLine(line);
  return p.waitForLine(reply, 10_000, n);
}

async function ok(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  const r = await tsnap(...args);
  expect(r.code, r.stderr).toBe(0);
  return r;
}

/** uffd state of a process as the kernel shows it: an fd, and uw in VmFlags. */
function traces(pid: number): { uffdFds: number; wpVmas: number } {
  const uffdFds = readdirSync(`/proc/${pid}/fd`).filter((fd) => {
    try { return readlinkSync(`/proc/${pid}/fd/${fd}`) === 'anon_inode:[userfaultfd]'; } catch { return false; }
  }).length;
  const wpVmas = (readFileSync(`/proc/${pid}/smaps`, 'utf8').match(/^VmFlags:.*\buw\b/gm) ?? []).length;
  return { uffdFds, wpVmas };
}

describe('incremental dumps', () => {
  it('each delta holds exactly the pages written in between; the chain restores the exact final memory', async () => {
    const work = tmpDir('tsnap-inc-');
    const p = await startProcess(await compileC('dirtier'), ['256']);
    const addr = parseHex(p.readyInfo.addr);
    const inRegion = (img: ReturnType<typeof readImage>) => [...storedPageSet(img)].filter((a) => a >= addr && a < addr + 256 * P).map((a) => (a - addr) / P).sort((a, b) => a - b);

    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    const first = readImage(join(work, '1'));
    expect(first.inventory.kind).toBe('full');
    expect(inRegion(first)).toHaveLength(256);
    expect(traces(p.pid).uffdFds).toBe(0); // the target keeps no uffd: the holder does
    expect(traces(p.pid).wpVmas).toBeGreaterThan(0);

    await cmd(p, 'w 3 7 9 200', /^DONE/);
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--parent', join(work, '1'));
    const second = readImage(join(work, '2'));
    expect(second.inventory.kind).toBe('delta');
    expect(inRegion(second)).toEqual([3, 7, 9, 200]);
    // Besides the region: its gen[] page, the stack, stdio buffers: a handful.
    expect(second.stats!.pagesWritten).toBeLessThan(4 + 12);

    await cmd(p, 'w 11 12', /^DONE/);
    await ok('dump', '--pid', String(p.pid), '--dir', join(work, '3'), '--parent', join(work, '2'));
    await p.exited;
    const third = readImage(join(work, '3'));
    expect(third.inventory.kind).toBe('delta');
    expect(inRegion(third)).toEqual([11, 12]);
    expect(findHolders(p.pid)).toEqual([]); // the final dump ended tracking

    const show = await ok('show', join(work, '3'));
    expect(show.stdout).toMatch(/chain \(newest first\):\n.*\/3 +delta.*\n.*\/2 +delta pre-dump.*\n.*\/1 +full pre-dump/);

    const r = await restoreDetached(join(work, '3'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('check');
    expect(await r.waitForLine(/^(PASS|FAIL)/, 10_000)).toBe('PASS');
  });

  it('a chain of 5 pre-dumps + dump across mmap, munmap, mremap, mprotect, DONTNEED and brk growth', async () => {
    const work = tmpDir('tsnap-inc-');
    const p = await startProcess(await compileC('mutator'), []);
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '0'));
    for (let k = 1; k <= 5; k++) {
      await cmd(p, `round ${k}`, new RegExp(`^DONE ${k}`));
      if (k < 5) await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, String(k)), '--parent', join(work, String(k - 1)));
    }
    expect(await cmd(p, 'check', /^(PASS|FAIL)/)).toBe('PASS');
    await ok('dump', '--pid', String(p.pid), '--dir', join(work, 'final'), '--parent', join(work, '4'));
    await p.exited;
    // Round 3's DONTNEED shows as absent pages in the delta of round 3.
    expect(readImage(join(work, '3')).pagemap.runs.some((r) => r.where === PageWhere.Zero)).toBe(true);
    const r = await restoreDetached(join(work, 'final'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('check');
    expect(await r.waitForLine(/^(PASS|FAIL)/, 10_000)).toBe('PASS');
  });

  it('a writer racing the scans: the restored memory is exactly the frozen one', async () => {
    const work = tmpDir('tsnap-inc-');
    const p = await startProcess(await compileC('racer'), ['2048']);
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    for (let k = 2; k <= 4; k++) await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, String(k)), '--parent', join(work, String(k - 1)));
    process.kill(p.pid, 'SIGUSR1');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 5000)).toMatch(/^PASS/);
    await ok('dump', '--pid', String(p.pid), '--dir', join(work, 'final'), '--parent', join(work, '4'));
    await p.exited;
    const r = await restoreDetached(join(work, 'final'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    process.kill(r.pid, 'SIGUSR1');
    expect(await r.waitForLine(/^(PASS|FAIL)/, 10_000)).toMatch(/^PASS/);
  });
});

describe('tracking', () => {
  it('survives tsnap exiting; untrack leaves no trace', async () => {
    const work = tmpDir('tsnap-inc-');
    const p = await startProcess(await compileC('dirtier'), ['64']);
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    const holders = findHolders(p.pid);
    expect(holders).toHaveLength(1);
    expect(traces(p.pid).wpVmas).toBeGreaterThan(0);
    const u = await ok('untrack', '--pid', String(p.pid));
    expect(u.stdout).toMatch(/stopped tracking/);
    for (let i = 0; i < 100 && existsSync(`/proc/${holders[0]}/fd`); i++) await new Promise((res) => setTimeout(res, 10));
    expect(traces(p.pid)).toEqual({ uffdFds: 0, wpVmas: 0 });
    expect(await cmd(p, 'check', /^(PASS|FAIL)/)).toBe('PASS');
  });

  it('lost tracking (holder gone) gives a warning and a full copy, never a delta that misses writes', async () => {
    const work = tmpDir('tsnap-inc-');
    const p = await startProcess(await compileC('dirtier'), ['64']);
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    for (const h of findHolders(p.pid)) process.kill(h, 'SIGKILL');
    await cmd(p, 'w 5', /^DONE/);
    const r = await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--parent', join(work, '1'));
    expect(r.stderr).toMatch(/warning: tracking of process \d+ was lost \(its holder process \d+ is gone\); copying all of its memory again/);
    const img = readImage(join(work, '2'));
    expect(img.inventory.kind).toBe('full');
    expect(storedPageSet(img).size).toBeGreaterThanOrEqual(64);
    await tsnap('untrack', '--pid', String(p.pid));
  });

  it('a pid that now belongs to another process is detected', async () => {
    const work = tmpDir('tsnap-inc-');
    const p = await startProcess(await compileC('dirtier'), ['64']);
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    // Pretend the parent tracked an earlier process that had this pid.
    const inv = readMetaFile<Inventory>(join(work, '1'), FileKind.Inventory);
    inv.tracking!.targetStartTime -= 1;
    rmSync(join(work, '1', 'inventory'));
    writeMetaFile(join(work, '1'), FileKind.Inventory, inv);
    const r = await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--parent', join(work, '1'));
    expect(r.stderr).toMatch(/now belongs to another process/);
    expect(readImage(join(work, '2')).inventory.kind).toBe('full');
    await tsnap('untrack', '--pid', String(p.pid));
    expect(findHolders(p.pid)).toEqual([]);
  });

  it('a pre-dump is not restorable on its own', async () => {
    const work = tmpDir('tsnap-inc-');
    const p = await startProcess(await compileC('dirtier'), ['16']);
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    const r = await tsnap('restore', '--dir', join(work, '1'));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/is a pre-dump/);
    await tsnap('untrack', '--dir', join(work, '1'));
  });
});

describe('the loop, squash, and what cannot be tracked', () => {
  it('dump --pre-dumps runs the loop, stops when rounds are small, and the result restores; squash folds the chain', async () => {
    const work = tmpDir('tsnap-inc-');
    const p = await startProcess(await compileC('dirtier'), ['128']);
    const dir = join(work, 'img');
    const r = await ok('dump', '--pid', String(p.pid), '--dir', dir, '--pre-dumps', '5', '--json');
    await p.exited;
    const out = JSON.parse(r.stdout);
    expect(out.stoppedBecause).toMatch(/round 2 wrote \d+ pages/); // an idle process: round 2 is tiny
    expect(out.final).toBe(join(dir, '3'));
    const squashed = join(work, 'squashed');
    await ok('squash', out.final, '--out', squashed);
    const sq = readImage(squashed);
    expect(sq.inventory.kind).toBe('full');
    expect(sq.inventory.parent).toBeNull();
    rmSync(dir, { recursive: true }); // the chain is no longer needed
    const rr = await restoreDetached(squashed, join(work, 'pid'));
    expect(rr.result.code, rr.result.stderr).toBe(0);
    rr.writeLine('check');
    expect(await rr.waitForLine(/^(PASS|FAIL)/, 10_000)).toBe('PASS');
  });

  it("a region under the program's own userfaultfd is copied whole every round", async () => {
    const work = tmpDir('tsnap-inc-');
    const p = await startProcess(await compileC('ownuffd'), []);
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--parent', join(work, '1'));
    const img = readImage(join(work, '2'));
    expect(img.stats!.vmasUntracked).toBeGreaterThanOrEqual(1);
    const addr = parseHex(p.readyInfo.addr);
    const stored = storedPageSet(img);
    for (let i = 0; i < 16; i++) expect(stored.has(addr + i * P)).toBe(true);
    expect(await cmd(p, 'check', /^(PASS|FAIL)/)).toBe('PASS');
    await tsnap('untrack', '--pid', String(p.pid));
  });

  it('a sparse 8 GiB reservation is not armed page table by page table', async () => {
    const work = tmpDir('tsnap-inc-');
    const p = await startProcess(await compileC('sparse'), []);
    const pte = () => Number(/VmPTE:\s+(\d+) kB/.exec(readFileSync(`/proc/${p.pid}/status`, 'utf8'))![1]);
    const before = pte();
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--parent', join(work, '1'));
    // Arming every page of 8 GiB would take 16 MiB of page tables.
    expect(pte() - before).toBeLessThan(256);
    expect(await cmd(p, 'check', /^(PASS|FAIL)/)).toBe('PASS');
    await tsnap('untrack', '--pid', String(p.pid));
  });
});

describe('fork in a tracked process', () => {
  it('the child is not tracked and the parent keeps being tracked', async () => {
    const work = tmpDir('tsnap-inc-');
    const p = await startPython([
      'import mmap, os, sys, time, ctypes',
      'm = mmap.mmap(-1, 64 * 4096, flags=mmap.MAP_PRIVATE)',
      'for i in range(64): m[i * 4096] = 1',
      'addr = ctypes.addressof(ctypes.c_char.from_buffer(m))',
      'print("READY addr=0x%x" % addr, flush=True)',
      'sys.stdin.readline()',
      'child = os.fork()',
      'if child == 0:',
      '    m[0] = 9',
      '    time.sleep(60)',
      '    os._exit(0)',
      'm[5 * 4096] = 7',
      'print("FORKED child=%d" % child, flush=True)',
      'sys.stdin.readline()',
      'print("PASS" if m[5 * 4096] == 7 and m[0] == 1 else "FAIL", flush=True)',
      'sys.stdin.readline()',
    ].join('\n'));
    const addr = parseHex(p.readyInfo.addr);
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    const forked = await cmd(p, 'fork', /^FORKED/);
    const child = Number(/child=(\d+)/.exec(forked)![1]);
    try {
      await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--parent', join(work, '1'));
      const stored = storedPageSet(readImage(join(work, '2')));
      expect(stored.has(addr + 5 * P)).toBe(true); // the parent's write
      expect(stored.has(addr)).toBe(false); // the child's write is not the parent's
      expect(traces(child).wpVmas).toBe(0);
      expect(await cmd(p, 'check', /^(PASS|FAIL)/)).toBe('PASS');
    } finally {
      process.kill(child, 'SIGKILL');
      await tsnap('untrack', '--pid', String(p.pid));
    }
  });
});

describe('tracking ends or is lost', () => {
  it('exec in the tracked process is detected: a full copy with a warning', async () => {
    const work = tmpDir('tsnap-inc-');
    const p = await startPython('import os, sys\nprint("READY", flush=True)\nsys.stdin.readline()\nprint("EXEC", flush=True)\nos.execv("/bin/sh", ["sh", "-c", "echo EXECED; read x"])\n');
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    await cmd(p, 'go', /^EXECED/);
    const r = await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--parent', join(work, '1'));
    expect(r.stderr).toMatch(/exec'd a new program/);
    expect(readImage(join(work, '2')).inventory.kind).toBe('full');
    await tsnap('untrack', '--pid', String(p.pid));
  });

  it('a --leave-running final dump leaves no registration, no write-protection, no holder', async () => {
    const work = tmpDir('tsnap-inc-');
    const p = await startProcess(await compileC('dirtier'), ['64']);
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    await cmd(p, 'w 1 2', /^DONE/);
    const holders = findHolders(p.pid);
    await ok('dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--parent', join(work, '1'), '--leave-running');
    for (let i = 0; i < 100 && holders.some((h) => existsSync(`/proc/${h}/fd`)); i++) await new Promise((res) => setTimeout(res, 10));
    expect(findHolders(p.pid)).toEqual([]);
    expect(traces(p.pid)).toEqual({ uffdFds: 0, wpVmas: 0 });
    expect(await cmd(p, 'check', /^(PASS|FAIL)/)).toBe('PASS');
  });
});

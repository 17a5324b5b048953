/**
 * What madvise(), mlock() and mmap flags set on a VMA (smaps VmFlags:
 * DONTFORK, DONTDUMP, HUGEPAGE, MERGEABLE, WIPEONFORK, SEQUENTIAL, RANDOM,
 * locked, NORESERVE) comes back after restore, as the kernel shows it in the
 * restored process's own smaps, in a plain dump and in a pre-dump chain.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { compileC, startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs, parseHex } from './helpers/fixtures.js';
import { tsnap, restoreDetached } from './helpers/tsnap.js';
import { readVmFlags } from '../src/proc/smaps.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

/** VmFlags of each region, without tsnap's own tracking flag (uw) and soft-dirty. */
function flagsOf(pid: number, starts: number[]): string[][] {
  const all = readVmFlags(pid);
  return starts.map((s) => (all.get(s) ?? ['<no vma>']).filter((t) => t !== 'uw' && t !== 'sd').sort());
}

describe('VMA flags', () => {
  for (const chain of [false, true]) {
    it(`madvise advice, mlock and MAP_NORESERVE survive ${chain ? 'a pre-dump chain' : 'dump and restore'}`, async () => {
      const bin = await compileC('advised');
      const p = await startProcess(bin, []);
      const starts = Object.entries(p.readyInfo).filter(([k]) => /^r\d+$/.test(k)).map(([, v]) => parseHex(v));
      expect(starts.length).toBe(10);
      const before = flagsOf(p.pid, starts);
      // The fixture really set what it claims (else the test proves nothing).
      for (const t of ['sr', 'rr', 'dc', 'dd', 'hg', 'nh', 'mg', 'wf', 'lo', 'nr']) expect(before.flat(), t).toContain(t);
      const work = tmpDir('vmaflags');
      const dir = join(work, chain ? '2' : 'img');
      if (chain) {
        expect((await tsnap('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'))).code).toBe(0);
        const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--parent', join(work, '1'));
        expect(d.code, d.stderr).toBe(0);
      } else {
        const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
        expect(d.code, d.stderr).toBe(0);
      }
      await p.exited;
      const r = await restoreDetached(dir, join(work, 'pid'));
      expect(r.result.code, r.result.stderr).toBe(0);
      expect(flagsOf(r.pid, starts)).toEqual(before);
      r.writeLine('check');
      expect(await r.waitForLine(/^(PASS|FAIL)/)).toBe('PASS');
    });
  }

  it('a read-only shared mapping of a file opened read-write can still be made writable after restore', async () => {
    const work = tmpDir('vmaflags');
    const file = join(work, 'data');
    writeFileSync(file, Buffer.alloc(4096, 'x'));
    const p = await startPython(`
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
fd = os.open(${JSON.stringify(file)}, os.O_RDWR)
addr = libc.mmap(None, 4096, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
os.close(fd)
print('READY', flush=True)
for cmd in sys.stdin:
    r = libc.mprotect(ctypes.c_void_p(addr), 4096, 3)
    if r != 0:
        print('ERR', ctypes.get_errno(), flush=True)
        continue
    ctypes.memset(addr, ord('y'), 1)
    print('OK', flush=True)
`);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('write');
    expect(await r.waitForLine(/^(OK|ERR)/)).toBe('OK');
    for (let i = 0; i < 100 && readFileSync(file)[0] !== 0x79; i++) await new Promise((res) => setTimeout(res, 10));
    expect(readFileSync(file).subarray(0, 2).toString()).toBe('yx');
  });
});


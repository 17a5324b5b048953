/**
 * SysV shared memory (postgres keeps its interlock segment this way):
 * segments attached by a process come back with the same id, key, owner,
 * mode and bytes, at the same addresses; a segment removed while attached
 * stays removed; a segment still attached by a running process is refused
 * at restore, and a failed restore leaves no segment behind.
 */
import { describe, it, expect, afterAll, afterEach } from 'vitest';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, restoreDetached } from './helpers/tsnap.js';
import { parseSysvShm } from '../src/proc/sysvipc.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const keys: number[] = [];
afterEach(() => {
  for (const k of keys.splice(0)) { try { execFileSync('ipcrm', ['-M', String(k)], { stdio: 'ignore' }); } catch { /* gone */ } }
});

const segments = () => parseSysvShm(readFileSync('/proc/sysvipc/shm', 'utf8'));

/**
 * Attaches a keyed segment (written with a pattern, then chown/chmod'ed)
 * and a private one removed at once; answers "check" with the segments'
 * ids, keys, sums and attach counts, as it sees them itself.
 */
const PROGRAM = (key: number) => `
import ctypes, os, sys, zlib
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
class Perm(ctypes.Structure):
    _fields_ = [('key', ctypes.c_int), ('uid', ctypes.c_uint), ('gid', ctypes.c_uint), ('cuid', ctypes.c_uint), ('cgid', ctypes.c_uint), ('mode', ctypes.c_uint), ('seq', ctypes.c_ushort), ('pad', ctypes.c_ushort), ('u1', ctypes.c_ulong), ('u2', ctypes.c_ulong)]
class Ds(ctypes.Structure):
    _fields_ = [('perm', Perm), ('segsz', ctypes.c_size_t), ('atime', ctypes.c_long), ('dtime', ctypes.c_long), ('ctime', ctypes.c_long), ('cpid', ctypes.c_int), ('lpid', ctypes.c_int), ('nattch', ctypes.c_ulong), ('u4', ctypes.c_ulong), ('u5', ctypes.c_ulong)]
SIZE = 3 * 4096 + 100
ids = [libc.shmget(${key}, SIZE, 0o1600 | 0o2000), libc.shmget(0, 8192, 0o1600)]
addrs = [libc.shmat(i, None, 0) for i in ids]
for n, (i, a) in enumerate(zip(ids, addrs)):
    size = SIZE if n == 0 else 8192
    ctypes.memmove(a, bytes((j * 7 + n) & 255 for j in range(size)), size)
ds = Ds()
libc.shmctl(ids[0], 2, ctypes.byref(ds))
ds.perm.uid = 18943; ds.perm.gid = 18944; ds.perm.mode = 0o640
libc.shmctl(ids[0], 1, ctypes.byref(ds))
libc.shmctl(ids[1], 0, None)  # removed while attached: it lives as long as we keep it
print('READY', ids[0], ids[1], hex(addrs[0]), flush=True)
for line in sys.stdin:
    ctypes.memset(addrs[0], 0x5a, 1)  # still writable
    out = []
    for n, (i, a) in enumerate(zip(ids, addrs)):
        size = SIZE if n == 0 else 8192
        d = Ds()
        r = libc.shmctl(i, 2, ctypes.byref(d))
        out.append('%d:%d:%x:%o:%d:%d:%08x' % (i, r, d.perm.key & 0xffffffff, d.perm.mode & 0o1777, d.perm.uid, d.nattch, zlib.crc32(ctypes.string_at(a, size))))
    print('STATE', ' '.join(out), flush=True)
`;

async function started(key: number) {
  keys.push(key);
  const p = await startPython(PROGRAM(key));
  p.writeLine('check');
  const before = await p.waitForLine(/^STATE/);
  return { p, before, ids: p.readyLine.split(' ').slice(1, 3).map(Number) };
}

describe('SysV shared memory', () => {
  it('segments come back with their ids, key, owner, mode and bytes; a removed one stays removed', async () => {
    const key = 0x75000000 + (process.pid & 0xffff);
    const { p, before, ids } = await started(key);
    expect(before).toMatch(new RegExp(`^STATE ${ids[0]}:0:${key.toString(16)}:640:18943:1:[0-9a-f]{8} ${ids[1]}:0:0:1600:0:1:[0-9a-f]{8}$`));
    const work = tmpDir('sysv');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    // The keyed segment outlives its process (unattached); the removed one is gone.
    expect(segments().find((s) => s.shmid === ids[0])?.nattch).toBe(0);
    expect(segments().some((s) => s.shmid === ids[1])).toBe(false);
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('check');
    expect(await r.waitForLine(/^STATE/)).toBe(before);
    // Removed again: only the restored process holds it.
    const removed = segments().find((s) => s.shmid === ids[1]);
    expect(removed === undefined || (removed.mode & 0o1000) !== 0).toBe(true);
  });

  it('the same, when the segment was removed after the dump (made again with its id and key)', async () => {
    const key = 0x76000000 + (process.pid & 0xffff);
    const { p, before, ids } = await started(key);
    const work = tmpDir('sysv');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    execFileSync('ipcrm', ['-m', String(ids[0])]);
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('check');
    expect(await r.waitForLine(/^STATE/)).toBe(before);
  });

  it('a segment still attached by a running process is refused at restore, and nothing is left', async () => {
    const key = 0x77000000 + (process.pid & 0xffff);
    const { p, ids } = await started(key);
    const work = tmpDir('sysv');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    const count = segments().length;
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'), ['--new-pid']);
    expect(r.result.code).not.toBe(0);
    expect(r.result.stderr).toMatch(new RegExp(`SysV shm ${ids[0]} .*attached by 1 running process`));
    expect(r.result.stderr.trim().split('\n')).toHaveLength(1);
    expect(segments().length).toBe(count);
    // The original is untouched.
    p.writeLine('check');
    expect(await p.waitForLine(/^STATE/, 5000, p.lines().length)).toMatch(new RegExp(`^STATE ${ids[0]}:0:`));
  });
});

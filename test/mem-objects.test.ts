/**
 * Memory the kernel keeps for a process outside plain pages: aio rings
 * (io_setup), guard regions (MADV_GUARD_INSTALL), files mapped after they
 * were deleted, deleted files larger than they hold (holes), memfds with
 * their mode. Each restored process checks itself.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { compileC, startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { waitPidsFree } from './helpers/processes.js';
import { tsnap, restoreDetached, dumpKillRestore, readImage } from './helpers/tsnap.js';
import { ExitCode } from '../src/errors.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

async function ok(...args: string[]): Promise<void> {
  const r = await tsnap(...args);
  expect(r.code, r.stderr).toBe(0);
}

/** PID 1 reaps the killed child of a tree late here: a same-pid restore waits for it. */
async function pidFree(pid: number): Promise<void> {
  await waitPidsFree([pid]);
}

describe('memory objects', () => {
  it('an aio ring that wrapped comes back at its address with its unreaped events, and takes new requests', async () => {
    const bin = await compileC('aioring');
    const work = tmpDir('tsnap-mem-');
    const p = await startProcess(bin, []);
    expect(p.readyLine).toMatch(/head=124 tail=3 nr=127/);
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toMatch(/restore check/);
    r.writeLine('check');
    expect(await r.waitForLine(/^(PASS|FAIL)/)).toBe('PASS head=6 tail=6');
  });

  it('an aio ring through a pre-dump chain, and left running', async () => {
    const bin = await compileC('aioring');
    const work = tmpDir('tsnap-mem-');
    const p = await startProcess(bin, []);
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    await ok('dump', '--pid', String(p.pid), '--dir', join(work, 'lr'), '--leave-running');
    await ok('dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--parent', join(work, '1'));
    await p.exited;
    const r = await restoreDetached(join(work, '2'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('check');
    expect(await r.waitForLine(/^(PASS|FAIL)/)).toBe('PASS head=6 tail=6');
  });

  it('a thread waiting in io_getevents (requests in flight) is refused before the freeze, the process untouched', async () => {
    const bin = await compileC('aioring');
    const work = tmpDir('tsnap-mem-');
    const p = await startProcess(bin, []);
    p.writeLine('wait');
    await p.waitForLine(/^WAITING/);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code).toBe(ExitCode.unsupported);
    expect(d.stderr).toMatch(/waits in io_getevents on the aio ring at 0x[0-9a-f]+; requests in flight cannot be restored/);
    expect(d.stderr.trim().split('\n').length).toBe(1);
    expect(existsSync(join(work, 'img'))).toBe(false);
    const mark = p.lines().length;
    p.writeLine('check');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 5000, mark)).toBe('PASS head=6 tail=6');
  });

  it('guard regions come back where they were (anonymous and file memory), in a full dump and through a pre-dump chain', async () => {
    const bin = await compileC('guards');
    const work = tmpDir('tsnap-mem-');
    const p = await startProcess(bin, [join(work, 'file')]);
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    p.writeLine('touch');
    await p.waitForLine(/^TOUCHED/);
    await ok('dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--parent', join(work, '1'));
    await p.exited;
    const img = readImage(join(work, '2'));
    const guards = img.process!.mm.vmas.flatMap((v) => v.guards ?? []);
    expect(guards.length).toBe(4); // pages 2-3 and 6, in two mappings
    const r = await restoreDetached(join(work, '2'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.result.stderr).not.toMatch(/restore check/);
    r.writeLine('check');
    expect(await r.waitForLine(/^(PASS|FAIL)/)).toBe('PASS');

    // And a plain dump of the restored process: the guards are found again.
    const again = await startProcess(bin, [join(work, 'file2')]);
    mkdirSync(join(work, 'plain'));
    const r2 = await dumpKillRestore(again, join(work, 'plain'));
    r2.writeLine('check');
    expect(await r2.waitForLine(/^(PASS|FAIL)/)).toBe('PASS');
  });

  it('a deleted file mapped shared and private, with an fd open on it, comes back as one deleted file', async () => {
    const work = tmpDir('tsnap-mem-');
    const f = join(work, 'scratch.bin');
    const p = await startPython(`
import ctypes, mmap, os, sys
os.closerange(3, 1 << 16)
path = ${JSON.stringify(f)}
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
os.write(fd, b'A' * 4096 + b'B' * 4096)
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
shared = libc.mmap(None, 8192, 3, 1, fd, 0)    # MAP_SHARED
private = libc.mmap(None, 8192, 3, 2, fd, 0)   # MAP_PRIVATE
ctypes.memset(private + 4096, ord('p'), 1)     # a copy-on-write page of its own
os.unlink(path)
print('READY', flush=True)
for cmd in sys.stdin:
    os.pwrite(fd, b'w', 0)                      # through the fd: the shared mapping sees it
    ctypes.memset(shared + 4096, ord('m'), 1)   # through the mapping: the fd sees it
    s0 = ctypes.string_at(shared, 1); p0 = ctypes.string_at(private, 1)
    p1 = ctypes.string_at(private + 4096, 1); f1 = os.pread(fd, 1, 4096)
    st = os.fstat(fd)
    print('shared=%r private=%r cow=%r fd=%r links=%d mode=%o size=%d' % (s0, p0, p1, f1, st.st_nlink, st.st_mode & 0o777, st.st_size), flush=True)
`);
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toMatch(/restore check/);
    r.writeLine('check');
    // private=w: a page never written privately reads the file, as a MAP_PRIVATE page does.
    expect(await r.waitForLine(/^shared=/)).toBe("shared=b'w' private=b'w' cow=b'p' fd=b'm' links=0 mode=640 size=8192");
    expect(readdirSync(work).sort()).toEqual(['img', 'pid']);
    const maps = readFileSync(`/proc/${r.pid}/maps`, 'utf8');
    expect(maps).toContain(`${f} (deleted)`);
  });

  it('a deleted name of a file that has another name in its directory reopens that very file; another name elsewhere is refused', async () => {
    const work = tmpDir('tsnap-mem-');
    mkdirSync(join(work, 'other'));
    const p = await startPython(`
import os, sys
os.closerange(3, 1 << 16)
d = ${JSON.stringify(work)}
fd = os.open(os.path.join(d, 'a'), os.O_RDWR | os.O_CREAT, 0o600)
os.write(fd, b'data')
os.link(os.path.join(d, 'a'), os.path.join(d, 'a.link'))
os.unlink(os.path.join(d, 'a'))
ino = os.fstat(fd).st_ino
print('READY ino=%d' % ino, flush=True)
for cmd in sys.stdin:
    if cmd.startswith('elsewhere'):
        os.link(os.path.join(d, 'a.link'), os.path.join(d, 'other', 'b'))
        os.unlink(os.path.join(d, 'a.link'))
        print('MOVED', flush=True)
        continue
    os.pwrite(fd, b'DATA', 0)
    with open(os.path.join(d, 'a.link'), 'rb') as f:
        print('ino=%d links=%d via-link=%r' % (os.fstat(fd).st_ino, os.fstat(fd).st_nlink, f.read()), flush=True)
`);
    const ino = p.readyInfo.ino;
    const img = join(work, 'img');
    const r = await dumpKillRestore(p, work);
    expect(readImage(img).process!.fds.find((f) => f.ghost)?.ghost?.alias).toBe(join(work, 'a.link'));
    r.writeLine('check');
    expect(await r.waitForLine(/^ino=/)).toBe(`ino=${ino} links=1 via-link=b'DATA'`);
    r.writeLine('elsewhere');
    await r.waitForLine(/^MOVED/);
    const d = await tsnap('dump', '--pid', String(r.pid), '--dir', join(work, 'refused'));
    expect(d.code).toBe(ExitCode.unsupported);
    expect(d.stderr).toContain(`(deleted) but its inode has 1 other name outside ${work}; restore could not open the same file again`);
  });

  it('the ghost limit counts the data of a deleted file, not its holes; --ghost-limit raises it, and the refusal names it', async () => {
    const work = tmpDir('tsnap-mem-');
    const p = await startPython(`
import os, sys
os.closerange(3, 1 << 16)
d = ${JSON.stringify(work)}
sparse = os.open(os.path.join(d, 'sparse'), os.O_RDWR | os.O_CREAT, 0o600)
os.pwrite(sparse, b's' * 8192, 100 << 20)            # 100 MiB of hole, then 8 KiB
dense = os.open(os.path.join(d, 'dense'), os.O_RDWR | os.O_CREAT, 0o600)
os.write(dense, os.urandom(2 << 20))                  # 2 MiB of data
os.unlink(os.path.join(d, 'sparse')); os.unlink(os.path.join(d, 'dense'))
import hashlib
print('READY', flush=True)
for cmd in sys.stdin:
    print('size=%d tail=%r sum=%s' % (os.fstat(sparse).st_size, os.pread(sparse, 2, (100 << 20) + 8190), hashlib.sha1(os.pread(dense, 2 << 20, 0)).hexdigest()), flush=True)
`);
    p.writeLine('check');
    const want = await p.waitForLine(/^size=/);
    expect(want).toMatch(/^size=104865792 tail=b'ss' sum=/);
    const refused = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'small'), '--ghost-limit', '1M');
    expect(refused.code).toBe(ExitCode.unsupported);
    expect(refused.stderr).toContain(`${join(work, 'dense')} (deleted), which holds 2097152 bytes of data; deleted files over the ghost limit of 1 MiB are not stored in images (raise it with --ghost-limit)`);
    expect(p.alive()).toBe(true);
    const r = await dumpKillRestore(p, work, ['--ghost-limit', '4M']);
    r.writeLine('check');
    expect(await r.waitForLine(/^size=/)).toBe(want);
  });

  it('a memfd keeps its mode (fchmod), and a child\'s own open of its parent\'s memfd is the same memfd', async () => {
    const work = tmpDir('tsnap-mem-');
    const p = await startPython(`
import os, sys, time
os.closerange(3, 1 << 16)
m = os.memfd_create('tsnap-test')
os.fchmod(m, 0o642)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    mine = os.open('/proc/%d/fd/%d' % (os.getppid(), m), os.O_RDONLY)
    os.read(r, 1)                                   # the parent wrote
    print('CHILD %r mode=%o' % (os.pread(mine, 5, 0), os.fstat(mine).st_mode & 0o777), flush=True)
    os._exit(0)
os.close(r)
while open('/proc/%d/syscall' % pid).read().split()[0] != '0': time.sleep(0.01)   # the child opened it and waits in read()
print('READY child=%d' % pid, flush=True)
for cmd in sys.stdin:
    os.pwrite(m, b'hello', 0)
    os.write(w, b'x')
    os.waitpid(pid, 0)
    print('PARENT mode=%o' % (os.fstat(m).st_mode & 0o777), flush=True)
`);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--tree');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await pidFree(Number(p.readyInfo.child));
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('go');
    expect(await r.waitForLine(/^CHILD/)).toBe("CHILD b'hello' mode=642");
    expect(await r.waitForLine(/^PARENT/)).toBe('PARENT mode=642');
  });

  it('--tcp-established: a connection between a parent and its child (both ends restored) survives, the reader blocked in it', async () => {
    const work = tmpDir('tsnap-mem-');
    const p = await startPython(`
import os, socket, sys, time
os.closerange(3, 1 << 16)
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
port = l.getsockname()[1]
pid = os.fork()
if pid == 0:
    l.close()
    c = socket.create_connection(('127.0.0.1', port))
    data = c.recv(100)                              # blocked here across the dump
    print('CHILD got %r' % data, flush=True)
    c.sendall(b'back:' + data)
    os._exit(0)
s, _ = l.accept()
l.close()
while open('/proc/%d/syscall' % pid).read().split()[0] != '45': time.sleep(0.01)  # the child waits in recv() (recvfrom)
print('READY child=%d' % pid, flush=True)
for cmd in sys.stdin:
    s.sendall(b'ping')
    print('PARENT got %r' % s.recv(100), flush=True)
    os.waitpid(pid, 0)
`);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--tree', '--tcp-established');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await pidFree(Number(p.readyInfo.child));
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('go');
    expect(await r.waitForLine(/^CHILD/)).toBe("CHILD got b'ping'");
    expect(await r.waitForLine(/^PARENT/)).toBe("PARENT got b'back:ping'");
  });
});

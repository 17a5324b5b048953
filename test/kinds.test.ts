/**
 * fd kinds and task state beyond the common ones: pidfds (of the dump's
 * processes and of reaped ones), O_PATH fds on symlinks (deleted too),
 * namespace fds, epoll registrations whose fd number was closed or reused,
 * inotify watches (with wd gaps and a deleted file), fd tables shared with
 * CLONE_FILES and glibc's SIGEV_THREAD timers. Each restored process checks
 * itself; refusals leave the process running.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { readFileSync, readlinkSync, existsSync, rmSync, writeFileSync, symlinkSync } from 'node:fs';
import { compileC, startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, readImage, dumpKillRestore, restoreDetached } from './helpers/tsnap.js';
import { registerPid, killPid, waitPidsFree } from './helpers/processes.js';
import { ExitCode } from '../src/errors.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

/**
 * dumpKillRestore for a tree: the killed children are orphans that PID 1
 * reaps late here, and their pids must be free again before the restore.
 */
async function dumpTreeKillRestore(p: { pid: number; exited: Promise<unknown> }, work: string, children: number[]) {
  const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--tree');
  expect(d.code, d.stderr).toBe(0);
  await p.exited;
  await waitPidsFree(children);
  const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
  expect(r.result.code, r.result.stderr).toBe(0);
  return r;
}

/** Python prologue: fds above 2 the shell may have leaked are closed first. */
const PRELUDE = `import os, sys, ctypes, stat, signal, time, select
os.closerange(3, 1024)
libc = ctypes.CDLL(None, use_errno=True)
def fdinfo(fd):
    return dict(l.split(':', 1) for l in open('/proc/self/fdinfo/%d' % fd).read().splitlines() if ':' in l)
`;

describe('pidfds', () => {
  it('pidfds of the tree, of the process itself and of reaped processes come back naming the same processes', async () => {
    const work = tmpDir('tsnap-kinds-');
    const p = await startPython(`${PRELUDE}
child = os.fork()
if child == 0:
    signal.signal(signal.SIGTERM, lambda *a: os._exit(7))
    while True: time.sleep(1)
c = os.pidfd_open(child, os.PIDFD_NONBLOCK if hasattr(os, 'PIDFD_NONBLOCK') else 0o4000)
me = os.pidfd_open(os.getpid())
def dead():
    pid = os.fork()
    if pid == 0: os._exit(0)
    a = os.pidfd_open(pid); b = os.pidfd_open(pid)
    os.waitpid(pid, 0)
    return a, b
d1, d2 = dead()
e1, _ = dead()
# A child that exited and is not reaped yet: the tree image keeps it as a zombie.
zombie = os.fork()
if zombie == 0: os._exit(5)
z = os.pidfd_open(zombie)
while open('/proc/%d/stat' % zombie).read().rsplit(')', 1)[1].split()[0] != 'Z': time.sleep(0.01)
print('READY child=%d zombie=%d' % (child, zombie), flush=True)
for cmd in sys.stdin:
    ino = lambda fd: os.fstat(fd).st_ino
    ok = [fdinfo(c)['Pid'].strip() == str(child), fdinfo(me)['Pid'].strip() == str(os.getpid()),
          fdinfo(d1)['Pid'].strip() == '-1', ino(d1) == ino(d2), ino(d1) != ino(e1),
          int(fdinfo(c)['flags'], 8) & 0o4000 != 0]
    signal.pidfd_send_signal(me, 0)
    signal.pidfd_send_signal(c, signal.SIGTERM)
    _, status = os.waitpid(child, 0)
    ok.append(os.waitstatus_to_exitcode(status) == 7)
    ok.append(fdinfo(z)['Pid'].strip() == str(zombie))
    ok.append(os.waitid(os.P_PIDFD, z, os.WEXITED).si_status == 5)
    print('PIDFD %s' % ' '.join('1' if x else '0' for x in ok), flush=True)
`);
    const r = await dumpTreeKillRestore(p, work, [Number(p.readyInfo.child), Number(p.readyInfo.zombie)]);
    expect(r.result.stderr).not.toContain('restore check');
    r.writeLine('check');
    expect(await r.waitForLine(/^PIDFD/)).toBe('PIDFD 1 1 1 1 1 1 1 1 1');
  });

  it('a pidfd of one of the process\'s threads (PIDFD_THREAD) names that thread again and reports its exit', async () => {
    const work = tmpDir('tsnap-kinds-');
    const p = await startPython(`${PRELUDE}
import threading
stop = threading.Event()
got = []
t = threading.Thread(target=lambda: (got.append(threading.get_native_id()), stop.wait()))
t.start()
while not got: time.sleep(0.01)
tid = got[0]
fd = os.pidfd_open(tid, 0o200)  # PIDFD_THREAD
print('READY tid=%d' % tid, flush=True)
for cmd in sys.stdin:
    same = fdinfo(fd)['Pid'].strip() == str(tid) and int(fdinfo(fd)['flags'], 8) & 0o200 != 0
    alive = not select.select([fd], [], [], 0)[0]
    stop.set()
    ended = bool(select.select([fd], [], [], 5)[0])
    print('THREAD %s %s %s' % (same, alive, ended), flush=True)
`);
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toContain('restore check');
    const f = readImage(join(work, 'img')).process!.fds.find((x) => x.pidfd)!;
    expect(f.pidfd).toMatchObject({ pid: Number(p.readyInfo.tid), leader: p.pid });
    r.writeLine('check');
    expect(await r.waitForLine(/^THREAD/)).toBe('THREAD True True True');
  });

  it('a pidfd of a process outside the dump is refused before the freeze; the process runs on', async () => {
    const work = tmpDir('tsnap-kinds-');
    const outsider = spawn('sleep', ['60'], { stdio: 'ignore' });
    registerPid(outsider.pid!);
    const p = await startPython(`${PRELUDE}
fd = os.pidfd_open(${outsider.pid})
print('READY fd=%d' % fd, flush=True)
for cmd in sys.stdin: print('ALIVE', flush=True)
`);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code).toBe(ExitCode.unsupported);
    expect(d.stderr).toContain(`fd ${p.readyInfo.fd} is a pidfd of process ${outsider.pid}, which is not part of the dump`);
    p.writeLine('x');
    await p.waitForLine(/^ALIVE/);
    await killPid(outsider.pid!);
  });
});

describe('symlinks and namespaces', () => {
  it('O_PATH fds on a symlink and on a deleted symlink, and a namespace fd, come back', async () => {
    const work = tmpDir('tsnap-kinds-');
    const link = join(work, 'link');
    const gone = join(work, 'gone');
    const p = await startPython(`${PRELUDE}
os.symlink('/some/target', ${JSON.stringify(link)})
os.symlink('other/target', ${JSON.stringify(gone)})
a = os.open(${JSON.stringify(link)}, os.O_PATH | os.O_NOFOLLOW)
b = os.open(${JSON.stringify(gone)}, os.O_PATH | os.O_NOFOLLOW)
os.unlink(${JSON.stringify(gone)})
ns = os.open('/proc/self/ns/net', os.O_RDONLY)
def target(fd):
    buf = ctypes.create_string_buffer(256)
    n = libc.readlinkat(fd, b'', buf, 256)
    return buf.raw[:n].decode()
print('READY', flush=True)
for cmd in sys.stdin:
    print('LINKS %s|%s|%s|%s|%s' % (target(a), target(b), stat.S_ISLNK(os.fstat(b).st_mode),
          os.readlink('/proc/self/fd/%d' % ns) == os.readlink('/proc/self/ns/net'), os.path.lexists(${JSON.stringify(gone)})), flush=True)
`);
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toContain('restore check');
    r.writeLine('check');
    expect(await r.waitForLine(/^LINKS/)).toBe('LINKS /some/target|other/target|True|True|False');
    expect(existsSync(gone)).toBe(false);
  });

  it('an fd of another network namespace is refused, naming it', async () => {
    const work = tmpDir('tsnap-kinds-');
    const other = spawn('unshare', ['-n', 'sleep', '60'], { stdio: 'ignore' });
    registerPid(other.pid!);
    // unshare execs sleep once the namespace exists.
    // Until then its namespace may still be ours: waited for (up to 10 s on a loaded machine), then required.
    for (let i = 0; i < 500 && !readFileSync(`/proc/${other.pid}/cmdline`, 'utf8').startsWith('sleep'); i++) await new Promise((res) => setTimeout(res, 20));
    expect(readFileSync(`/proc/${other.pid}/cmdline`, 'utf8')).toMatch(/^sleep/);
    const p = await startPython(`${PRELUDE}
fd = os.open('/proc/${other.pid}/ns/net', os.O_RDONLY)
print('READY fd=%d' % fd, flush=True)
for cmd in sys.stdin: print('ALIVE', flush=True)
`);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code).toBe(ExitCode.unsupported);
    expect(d.stderr).toMatch(new RegExp(`fd ${p.readyInfo.fd} of process ${p.pid} is a net namespace \\(net:\\[\\d+\\]\\) other than the process's own`));
    p.writeLine('x');
    await p.waitForLine(/^ALIVE/);
    await killPid(other.pid!);
  });
});

describe('epoll', () => {
  it('registrations whose fd was closed, reused by another file, or shared by several files come back with their data', async () => {
    const work = tmpDir('tsnap-kinds-');
    const p = await startPython(`${PRELUDE}
class Ev(ctypes.Structure):
    _pack_ = 1
    _fields_ = [('events', ctypes.c_uint32), ('data', ctypes.c_uint64)]
ep = select.epoll()
pipes = [os.pipe() for _ in range(4)]
def add(fd, data):
    assert libc.epoll_ctl(ep.fileno(), 1, fd, ctypes.byref(Ev(select.EPOLLIN, data))) == 0
# 0: registered as itself; 1: under 200, closed; 2 and 3: both under 201, which then
# holds 3's read end for a while and ends up a dup of /dev/null.
add(pipes[0][0], 100)
os.dup2(pipes[1][0], 200); add(200, 101); os.close(200)
os.dup2(pipes[2][0], 201); add(201, 102)
os.dup2(pipes[3][0], 201); add(201, 103)
null = os.open('/dev/null', os.O_RDONLY); os.dup2(null, 201); os.close(null)
print('READY', flush=True)
for cmd in sys.stdin:
    got = []
    for i, (r, w) in enumerate(pipes):
        os.write(w, b'x')
        got.append(','.join(str(d) for d, _ in ep.poll(1)))
        os.read(r, 1)
    print('EPOLL %s' % ' '.join(got), flush=True)
`);
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toContain('restore check');
    const ep = readImage(join(work, 'img')).process!.fds.find((f) => f.kind === 'epoll')!;
    expect(ep.epoll!.targets.filter((t) => t.via !== undefined).length).toBe(3);
    r.writeLine('check');
    expect(await r.waitForLine(/^EPOLL/)).toBe('EPOLL 100 101 102 103');
    expect(readlinkSync(`/proc/${r.pid}/fd/201`)).toBe('/dev/null');
    expect(existsSync(`/proc/${r.pid}/fd/200`)).toBe(false);
  });
});

describe('inotify', () => {
  it('watches come back with their wd numbers (gaps kept), on a deleted file too, with nothing queued', async () => {
    const work = tmpDir('tsnap-kinds-');
    const dir = join(work, 'watched');
    const p = await startPython(`${PRELUDE}
import struct
os.mkdir(${JSON.stringify(dir)})
held = os.open(${JSON.stringify(join(dir, 'held'))}, os.O_CREAT | os.O_RDWR, 0o644)
ifd = libc.inotify_init1(os.O_NONBLOCK)
w = lambda path, mask: libc.inotify_add_watch(ifd, path.encode(), mask)
IN_MODIFY, IN_CREATE, IN_CLOSE_WRITE, IN_IGNORED = 0x2, 0x100, 0x8, 0x8000
d = w(${JSON.stringify(dir)}, IN_CREATE)
spare = w('/tmp', IN_CREATE)
h = w(${JSON.stringify(join(dir, 'held'))}, IN_MODIFY | IN_CLOSE_WRITE)
libc.inotify_rm_watch(ifd, spare)
os.unlink(${JSON.stringify(join(dir, 'held'))})
def events():
    out = []
    while True:
        try: b = os.read(ifd, 4096)
        except BlockingIOError: return out
        i = 0
        while i < len(b):
            wd, mask, _, n = struct.unpack_from('iIII', b, i)
            if not mask & IN_IGNORED: out.append('%d:%x' % (wd, mask & 0xfff))
            i += 16 + n
events()
print('READY d=%d h=%d' % (d, h), flush=True)
for cmd in sys.stdin:
    before = events()
    os.write(held, b'x')
    open(${JSON.stringify(join(dir, 'new'))}, 'w').close()
    nxt = w(${JSON.stringify(work)}, IN_CREATE)
    print('INOTIFY before=[%s] after=[%s] next=%d' % (','.join(before), ','.join(events()), nxt), flush=True)
`);
    expect([p.readyInfo.d, p.readyInfo.h]).toEqual(['1', '3']);
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toContain('restore check');
    const watches = readImage(join(work, 'img')).process!.fds.find((f) => f.inotify)!.inotify!.watches;
    expect(watches.map((x) => [x.wd, x.path === null, x.via !== undefined])).toEqual([[1, false, false], [3, true, true]]);
    r.writeLine('check');
    // The write to the deleted file, then the new file in the directory; the next wd is 4, as it would have been.
    expect(await r.waitForLine(/^INOTIFY/)).toBe('INOTIFY before=[] after=[3:2,1:100] next=4');
  });
});

describe('restore refuses what changed since the dump, before anything is created', () => {
  async function dumped(work: string, setup: string): Promise<{ dir: string; pid: number; fd: string }> {
    const p = await startPython(`${PRELUDE}
${setup}
print('READY fd=%d' % fd, flush=True)
for cmd in sys.stdin: pass
`);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    return { dir, pid: p.pid, fd: p.readyInfo.fd };
  }

  it('an inotify whose watched file was replaced by another', async () => {
    const work = tmpDir('tsnap-kinds-');
    const watched = join(work, 'watched');
    const { dir, pid, fd } = await dumped(work, `open(${JSON.stringify(watched)}, 'w').close()
fd = libc.inotify_init1(0)
assert libc.inotify_add_watch(fd, ${JSON.stringify(watched)}.encode(), 0x2) == 1`);
    rmSync(watched);
    writeFileSync(watched, 'new inode');
    const r = await tsnap('restore', '--dir', dir, '--detach');
    expect(r.code).toBe(ExitCode.restoreFailed);
    expect(r.stderr).toContain(`fd ${fd} (inotify) watched ${watched} (wd 1), which is another file now`);
    expect(existsSync(`/proc/${pid}`)).toBe(false);
  });

  it('an O_PATH fd on a symlink that now says something else', async () => {
    const work = tmpDir('tsnap-kinds-');
    const link = join(work, 'link');
    const { dir, pid, fd } = await dumped(work, `os.symlink('before', ${JSON.stringify(link)})
fd = os.open(${JSON.stringify(link)}, os.O_PATH | os.O_NOFOLLOW)`);
    rmSync(link);
    symlinkSync('after', link);
    const r = await tsnap('restore', '--dir', dir, '--detach');
    expect(r.code).toBe(ExitCode.restoreFailed);
    expect(r.stderr).toContain(`fd ${fd}: ${link} is no longer the symlink to before it was at the dump`);
    expect(existsSync(`/proc/${pid}`)).toBe(false);
  });
});

describe('shared fd tables and thread timers', () => {
  it('a child that shares its parent\'s fd table (CLONE_FILES) shares it again after restore', async () => {
    const work = tmpDir('tsnap-kinds-');
    const p = await startProcess(await compileC('sharedtable'), []);
    const r = await dumpTreeKillRestore(p, work, [Number(p.readyInfo.child)]);
    expect(r.result.stderr).not.toContain('restore check');
    r.writeLine('check');
    expect(await r.waitForLine(/^SHARED/)).toBe('SHARED child sees 77: yes');
  });

  it('a SIGEV_THREAD timer (glibc\'s helper thread) keeps firing after restore', async () => {
    const work = tmpDir('tsnap-kinds-');
    const p = await startProcess(await compileC('threadtimer'), []);
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toContain('restore check');
    const timers = readImage(join(work, 'img')).process!.posixTimers!;
    expect(timers.map((t) => t.notify)).toEqual(['thread']);
    r.writeLine('check');
    expect(await r.waitForLine(/^TICKS/)).toBe('TICKS more');
  });
});

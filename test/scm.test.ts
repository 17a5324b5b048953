/**
 * Files and credentials in flight in unix socket pairs (SCM_RIGHTS,
 * SCM_CREDENTIALS): dumped with the queue, restored, and received and used
 * by the restored process itself. A file in flight that restore could not
 * bring back is refused before anything is lost, and the process keeps its
 * queue.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { waitPidsFree } from './helpers/processes.js';
import { tsnap, readImage, dumpKillRestore, restoreDetached, killPid } from './helpers/tsnap.js';
import { ExitCode } from '../src/errors.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const RECORDS = [
  'MSG pre nfds=0 creds=self',
  'MSG m1 nfds=2 creds=self', 'PIPE via-pipe', 'FILE file-content',
  'MSG plain nfds=0 creds=self',
  'MSG ev nfds=1 creds=self', 'EVENTFD 12',
  'END',
];
// A stream read glues the writes before the one that carried files, and stops after it.
const STREAM = [
  'MSG prem1 nfds=2 creds=self', 'PIPE via-pipe', 'FILE file-content',
  'MSG plainev nfds=1 creds=self', 'EVENTFD 12',
  'END',
];

async function received(r: { lines: string[]; writeLine(s: string): void; waitForLine(re: RegExp, t?: number, from?: number): Promise<string> }): Promise<string[]> {
  const from = r.lines.length;
  r.writeLine('check');
  await r.waitForLine(/^END/, 5000, from);
  return r.lines.slice(from).filter((l) => !l.startsWith('READY'));
}

describe('files in flight in unix sockets', () => {
  for (const [type, want] of [['dgram', RECORDS], ['seqpacket', RECORDS], ['stream', STREAM]] as const) {
    it(`${type}: a pipe end nobody else holds, a closed file and a shared eventfd in flight come back, with the senders' credentials`, async () => {
      const work = tmpDir('tsnap-scm-');
      const p = await startProcess(await compileC('scm'), [work, type]);
      const r = await dumpKillRestore(p, work);
      const img = readImage(join(work, 'img')).process!;
      const owner = img.fds.find((f) => f.socket?.scm)!;
      const scm = owner.socket!.scm!;
      expect(scm.messages.map((m) => m.fds.length)).toEqual([0, 2, 0, 1]);
      // The eventfd in flight is the open file the process also holds.
      const ev = scm.files.find((f) => f.kind === 'eventfd')!;
      expect(img.fds.find((f) => f.kind === 'eventfd')!.ofd).toBe(ev.ofd);
      expect(Math.min(...scm.files.map((f) => f.fd))).toBeGreaterThan(Math.max(...img.fds.map((f) => f.fd)));
      expect(r.result.stderr).not.toMatch(/differs|restore check/);
      const show = await tsnap('show', join(work, 'img'));
      expect(show.stdout).toMatch(/queued: 4 messages, in flight: pipe:\[\d+\], \S+\/data, anon_inode:\[eventfd\]/);
      expect(await received(r)).toEqual(want);
    });
  }

  it('--new-pid: the credentials name the process under its new pid', async () => {
    const work = tmpDir('tsnap-scm-');
    const p = await startProcess(await compileC('scm'), [work, 'dgram']);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'), ['--new-pid']);
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.pid).not.toBe(p.pid);
    expect(await received(r)).toEqual(RECORDS);
  });

  it('--leave-running takes the queue without consuming it: the original receives everything itself', async () => {
    const work = tmpDir('tsnap-scm-');
    const p = await startProcess(await compileC('scm'), [work, 'dgram']);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    const from = p.lines().length;
    p.writeLine('check');
    await p.waitForLine(/^END/, 5000, from);
    expect(p.lines().slice(from)).toEqual(RECORDS);
  });

  it('a tree: what a parent sent its child is received by the restored child, with the parent\'s pid as it is now', async () => {
    const work = tmpDir('tsnap-scm-');
    const script = `
import array, os, signal, socket, struct, sys
os.closerange(3, 256)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    a.close(); os.close(r); os.close(w)
    signal.sigwait({signal.SIGUSR1})
    msg, anc, _, _ = b.recvmsg(10, socket.CMSG_SPACE(4) + socket.CMSG_SPACE(12))
    fds = array.array('i'); creds = None
    for level, kind, data in anc:
        if kind == socket.SCM_RIGHTS: fds.frombytes(data)
        if kind == socket.SCM_CREDENTIALS: creds = struct.unpack('iII', data)
    b.send(b'child %s %d %s %s' % (msg, len(fds), b'parent' if creds and creds[0] == os.getppid() else repr(creds).encode(), os.read(fds[0], 20)))
    signal.sigwait({signal.SIGUSR1})
    os._exit(0)
b.close()
a.sendmsg([b'tree'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [r]))])
os.close(r)
print('READY child=%d' % pid, flush=True)
for line in sys.stdin:
    os.write(w, b'from-parent')
    os.kill(pid, signal.SIGUSR1)
    print('REPLY ' + a.recv(100).decode(), flush=True)
`;
    const p = await startProcess('python3', ['-u', '-c', script]);
    const child = Number(p.readyInfo.child);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--tree');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await waitPidsFree([child]);
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('go');
    expect(await r.waitForLine(/^REPLY/)).toBe('REPLY child tree 1 parent from-parent');
    await killPid(child);
  });

  it('a socket pair end with its own queued data, a listening socket and a memfd that live only in flight come back working', async () => {
    const work = tmpDir('tsnap-scm-');
    const script = `
import array, os, socket, sys
os.closerange(3, 256)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
name = b'\\0tsnap-scm-%d' % os.getpid()
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); l.bind(name); l.listen()
m = os.memfd_create('scm-test'); os.write(m, b'memfd-data')
d.send(b'queued-in-c')
a.sendmsg([b'k'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [c.fileno(), l.fileno(), m]))])
c.close(); l.close(); os.close(m)
print('READY', flush=True)
sys.stdin.readline()
msg, anc, _, _ = b.recvmsg(10, socket.CMSG_SPACE(12))
fds = array.array('i'); fds.frombytes(anc[0][2])
c2 = socket.socket(fileno=fds[0]); l2 = socket.socket(fileno=fds[1])
got = c2.recv(100)
c2.send(b'back')
cl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); cl.connect(name)
s2, _ = l2.accept(); cl.send(b'hi')
print('GOT', msg.decode(), got.decode(), d.recv(10).decode(), s2.recv(10).decode(), os.pread(fds[2], 20, 0).decode(), flush=True)
`;
    const p = await startProcess('python3', ['-u', '-c', script]);
    const r = await dumpKillRestore(p, work);
    r.writeLine('go');
    expect(await r.waitForLine(/^GOT/)).toBe('GOT k queued-in-c back hi memfd-data');
  });

  it('refused by name, the process untouched: files riding with an empty datagram; a socket in flight with files in flight itself; credentials of a sender outside the dump that the program reads', async () => {
    const work = tmpDir('tsnap-scm-');
    const nested = `
import array, os, socket, sys
os.closerange(3, 256)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
c.sendmsg([b'i'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [0]))])
a.sendmsg([b'o'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [d.fileno()]))])
d.close()
print('READY', flush=True)
sys.stdin.readline()
print('GOT', b.recvmsg(10, 64)[0].decode(), flush=True)
`;
    const outside = `
import os, socket, sys
os.closerange(3, 256)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
if os.fork() == 0:
    a.send(b'from-child'); os._exit(0)
os.wait()
print('READY', flush=True)
sys.stdin.readline()
print('GOT', b.recvmsg(20, 64)[0].decode(), flush=True)
`;
    const empty = `
import array, os, socket, sys
os.closerange(3, 256)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.send(b'first')
a.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [0]))])
print('READY', flush=True)
sys.stdin.readline()
print('GOT', b.recv(10).decode(), len(b.recvmsg(10, 64)[1]), flush=True)
`;
    for (const [script, re, got] of [
      [empty, /fd \d+ \(unix socket\) has an empty datagram carrying files in flight/, 'GOT first 1'],
      [nested, /fd \d+ of process \d+ is a unix socket with socket:\[\d+\] in flight, a unix socket that has files in flight itself/, 'GOT o'],
      [outside, /reads its senders' credentials \(SO_PASSCRED\) and has a message from process \d+, outside the dump/, 'GOT from-child'],
    ] as const) {
      const p = await startProcess('python3', ['-u', '-c', script]);
      const res = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, `img${p.pid}`));
      expect(res.code, res.stderr).toBe(ExitCode.unsupported);
      expect(res.stderr).toMatch(re);
      p.writeLine('go');
      expect(await p.waitForLine(/^GOT/)).toBe(got);
    }
  });

  it('a pipe end in flight whose other end is closed is refused before the freeze is over; the process keeps it', async () => {
    const work = tmpDir('tsnap-scm-');
    const script = `
import array, os, socket, sys
os.closerange(3, 256)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
r, w = os.pipe()
os.write(w, b'left')
a.sendmsg([b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [r]))])
os.close(r); os.close(w)
print('READY', flush=True)
sys.stdin.readline()
msg, anc, _, _ = b.recvmsg(10, socket.CMSG_SPACE(4))
fds = array.array('i'); fds.frombytes(anc[0][2])
print('GOT', msg.decode(), os.read(fds[0], 10).decode(), flush=True)
`;
    const p = await startProcess('python3', ['-u', '-c', script]);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code, d.stderr).toBe(ExitCode.unsupported);
    expect(d.stderr).toMatch(/fd \d+ of process \d+ is a unix socket with the read end of pipe:\[\d+\] in flight, whose other end is closed/);
    expect(p.alive()).toBe(true);
    p.writeLine('go');
    expect(await p.waitForLine(/^GOT/)).toBe('GOT x left');
  });
});

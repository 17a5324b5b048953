/**
 * File descriptors tsnap recreates: pipes with their unread bytes, eventfd,
 * timerfd, signalfd, epoll with its registrations, shared offsets of dups,
 * listening and datagram sockets. Each restored process checks itself; a
 * node http server answers on its restored listening socket.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { createConnection } from 'node:net';
import { createSocket } from 'node:dgram';
import { request } from 'node:http';
import { join } from 'node:path';
import { compileC, startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { waitPidsFree } from './helpers/processes.js';
import { tsnap, restoreDetached, readImage, killPid, dumpKillRestore } from './helpers/tsnap.js';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { ExitCode } from '../src/errors.js';
import { lockRulesOf } from './helpers/lock-rules.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

function unixRead(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = createConnection(path);
    let got = '';
    c.on('data', (d) => { got += d; });
    c.on('end', () => resolve(got));
    c.on('error', reject);
  });
}

function httpGet(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/', agent: false }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('file descriptors', () => {
  it('pipe bytes, eventfd, timerfd, signalfd, epoll, dup offsets, unix listener and UDP socket come back', async () => {
    const work = tmpDir('tsnap-files-');
    const p = await startProcess(await compileC('fdkinds'), [work]);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const fds = readImage(dir).process!.fds;
    expect(fds.find((f) => f.fd === 40)!.ofd).toBe(fds.find((f) => f.kind === 'file' && f.fd !== 40)!.ofd);

    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('check');
    expect(await r.waitForLine(/^(PASS|FAIL)/)).toBe('PASS');
    const got = unixRead(join(work, 'sock'));
    r.writeLine('accept');
    await r.waitForLine(/^ACCEPTED/);
    expect(await got).toBe('hello\n');
    const u = createSocket('udp4');
    await new Promise<void>((res) => u.send('ping', Number(p.readyInfo.udp), '127.0.0.1', () => res()));
    u.close();
    r.writeLine('udp');
    expect(await r.waitForLine(/^UDP/)).toBe('UDP ping');
  });

  it('a node http server answers on its restored listening socket, its state intact', async () => {
    const work = tmpDir('tsnap-files-');
    const script = `
const http = require('http');
let served = 0;
const s = http.createServer((req, res) => { served++; res.end('served=' + served + ' pid=' + process.pid); });
s.listen(0, '127.0.0.1', () => console.log('READY port=' + s.address().port));
`;
    const p = await startProcess(process.execPath, ['-e', script]);
    const port = Number(p.readyInfo.port);
    for (let i = 1; i <= 3; i++) expect(await httpGet(port)).toBe(`served=${i} pid=${p.pid}`);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(await httpGet(port)).toBe(`served=4 pid=${p.pid}`);
    expect(await httpGet(port)).toBe(`served=5 pid=${p.pid}`);
  });

  it('an fd tsnap cannot restore is refused at dump, naming it, with the process untouched', async () => {
    const work = tmpDir('tsnap-files-');
    const script = `
import ctypes, time
fd = ctypes.CDLL(None).fanotify_init(0, 0)
print("READY fd=%d" % fd, flush=True)
time.sleep(600)
`;
    const p = await startProcess('python3', ['-u', '-c', script]);
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(r.code).toBe(ExitCode.unsupported);
    expect(r.stderr).toContain(`fd ${p.readyInfo.fd} is a anon_inode (anon_inode:[fanotify]) that tsnap cannot checkpoint`);
    expect(r.stderr.trim().split('\n').length).toBe(1);
    expect(existsSync(join(work, 'img'))).toBe(false);
    expect(p.alive()).toBe(true);
  });

  it('memory mapped from a deleted file over the ghost limit is refused before the freeze, naming the mapping', async () => {
    const work = tmpDir('tsnap-files-');
    const f = join(work, 'gone.bin');
    const script = `
import ctypes, os, time
fd = os.open(${JSON.stringify(f)}, os.O_RDWR | os.O_CREAT)
os.write(fd, b'x' * 4096)
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap(None, 4096, 3, 1, fd, 0)  # MAP_SHARED, without keeping an fd (python's mmap would dup one)
os.close(fd)
os.unlink(${JSON.stringify(f)})
print("READY", flush=True)
time.sleep(600)
`;
    const p = await startProcess('python3', ['-u', '-c', script]);
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--ghost-limit', '1K');
    expect(r.code).toBe(ExitCode.unsupported);
    expect(r.stderr).toMatch(new RegExp(`maps ${f} \\(deleted\\) at 0x[0-9a-f]+, which holds 4096 bytes of data; deleted files over the ghost limit of 1024 bytes`));
    expect(existsSync(join(work, 'img'))).toBe(false);
    expect(p.alive()).toBe(true);
  });

  it('unix socket pairs between a parent and its child keep their queued stream bytes and datagrams', async () => {
    const work = tmpDir('tsnap-files-');
    const script = `
import os, signal, socket, sys
a, b = socket.socketpair()
da, db = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.sendall(b'hello-from-parent')
da.send(b'd1'); da.send(b'd2')
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
pid = os.fork()
if pid == 0:
    a.close(); da.close()
    signal.sigwait({signal.SIGUSR1})
    got = [b.recv(100).decode(), db.recv(10).decode(), db.recv(10).decode()]
    b.sendall(('child-ok ' + ' '.join(got)).encode())
    signal.sigwait({signal.SIGUSR1})
    os._exit(0)
b.close(); db.close()
print('READY child=%d' % pid, flush=True)
for line in sys.stdin:
    if line.startswith('go'):
        os.kill(pid, signal.SIGUSR1)
        print('REPLY ' + a.recv(100).decode(), flush=True)
`;
    const p = await startProcess('python3', ['-u', '-c', script]);
    const child = Number(p.readyInfo.child);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await waitPidsFree([child]);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('go');
    expect(await r.waitForLine(/^REPLY/)).toBe('REPLY child-ok hello-from-parent d1 d2');
    await killPid(child);
  });

  it('--tcp-established: a TCP connection survives dump and restore, unread bytes included, and the client never notices', async () => {
    const work = tmpDir('tsnap-files-');
    const script = `
import socket, sys
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
print('READY port=%d' % l.getsockname()[1], flush=True)
c, _ = l.accept()
l.close()
f = c.makefile('rb', buffering=0)
n = 0
for cmd in sys.stdin:
    if cmd.startswith('serve'):
        line = b''
        while not line.endswith(b'\\n'):
            line += c.recv(1)
        n += 1
        c.sendall(b'echo:' + line.strip() + b' n=%d\\n' % n)
`;
    const p = await startProcess('python3', ['-u', '-c', script]);
    const client = createConnection(Number(p.readyInfo.port), '127.0.0.1');
    await new Promise((res) => client.once('connect', res));
    const got: string[] = [];
    let buf = '';
    client.on('data', (d) => { buf += d; const parts = buf.split('\n'); buf = parts.pop()!; got.push(...parts); });
    const next = async (n: number) => { for (let i = 0; i < 500 && got.length < n; i++) await new Promise((res) => setTimeout(res, 10)); return got[n - 1]; };
    client.write('a\n');
    p.writeLine('serve');
    expect(await next(1)).toBe('echo:a n=1');
    // Dumped and left running: repair mode is switched off again, the connection goes on.
    const lr = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'lr'), '--tcp-established', '--leave-running');
    expect(lr.code, lr.stderr).toBe(0);
    client.write('x\n');
    p.writeLine('serve');
    expect(await next(2)).toBe('echo:x n=2');
    client.write('b\n'); // waits unread in the server's receive queue
    await new Promise((res) => setTimeout(res, 50));

    const plain = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'refused'));
    expect(plain.code).toBe(ExitCode.unsupported);
    expect(plain.stderr).toContain('--tcp-established');
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tcp-established');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('serve');
    expect(await next(3)).toBe('echo:b n=3');
    client.write('c\n');
    r.writeLine('serve');
    expect(await next(4)).toBe('echo:c n=4');
    expect(client.destroyed).toBe(false);
    client.destroy();
  });

  it('--tcp-established: half-closed connections come back in their states (CLOSE_WAIT, FIN_WAIT2) and finish closing; an ended one reads EOF', async () => {
    const work = tmpDir('tsnap-files-');
    const p = await startPython(`
import os, socket, sys, struct, errno
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
os.closerange(3, l.fileno())
print('READY port=%d' % l.getsockname()[1], flush=True)
a, _ = l.accept()   # the client sends, then shuts its side: CLOSE_WAIT here
b, _ = l.accept()   # this side shuts first: FIN_WAIT2
b.shutdown(socket.SHUT_WR)
# A connection that ended while its fds stayed open (both sides closed).
e1 = socket.create_connection(l.getsockname()); e2, _ = l.accept()
e1.shutdown(socket.SHUT_WR); e2.shutdown(socket.SHUT_WR)
state = lambda s: s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
for cmd in sys.stdin:
    if cmd.startswith('states'):
        print('STATES %d %d %d %d' % (state(a), state(b), state(e1), state(e2)), flush=True)
    elif cmd.startswith('go'):
        got = b''
        while True:
            d = a.recv(100)
            if not d: break
            got += d
        a.sendall(b'bye\\n'); a.shutdown(socket.SHUT_WR)
        late = b.recv(100)
        try:
            e1.send(b'x'); sent = 'sent'
        except OSError as err:
            sent = errno.errorcode[err.errno]
        print('GOT %r EOF; LATE %r; ENDED %r %r %s' % (got, late, e1.recv(1), e2.recv(1), sent), flush=True)
`);
    const port = Number(p.readyInfo.port);
    // Half-open on the client's side too: node would otherwise close its side on the server's FIN.
    const connectTo = async () => { const c = createConnection({ port, host: '127.0.0.1', allowHalfOpen: true }); await new Promise((res) => c.once('connect', res)); return c; };
    const ca = await connectTo();
    const fromA: string[] = [];
    let aEnded = false;
    ca.on('data', (d) => fromA.push(String(d)));
    ca.on('end', () => { aEnded = true; });
    ca.write('hello\n');
    ca.end();
    const cb = await connectTo();
    let bEnded = false;
    cb.on('end', () => { bEnded = true; });
    cb.on('error', () => {});
    const mark = p.lines().length;
    for (let i = 0; i < 100 && !bEnded; i++) await new Promise((res) => setTimeout(res, 10));
    p.writeLine('states');
    expect(await p.waitForLine(/^STATES/, 5000, mark)).toBe('STATES 8 5 7 7');
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tcp-established');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('states');
    expect(await r.waitForLine(/^STATES/)).toBe('STATES 8 5 7 7');
    cb.write('late\n');
    r.writeLine('go');
    expect(await r.waitForLine(/^GOT/)).toBe("GOT b'hello\\n' EOF; LATE b'late\\n'; ENDED b'' b'' EPIPE");
    for (let i = 0; i < 300 && !aEnded; i++) await new Promise((res) => setTimeout(res, 10));
    expect(fromA.join('')).toBe('bye\n');
    expect(aEnded).toBe(true);
    ca.destroy();
    cb.destroy();
  });

  it('--tcp-close: connections come back closed, at dump (dump --tcp-close) or at restore (restore --tcp-close), and the lock is lifted', async () => {
    const work = tmpDir('tsnap-files-');
    const script = `
import os, socket, sys, errno
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
os.closerange(3, l.fileno())
print('READY port=%d' % l.getsockname()[1], flush=True)
c, _ = l.accept()
for cmd in sys.stdin:
    try:
        c.send(b'x'); sent = 'sent'
    except OSError as err:
        sent = errno.errorcode[err.errno]
    print('STATE %d READ %r WRITE %s' % (c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0], c.recv(10), sent), flush=True)
`;
    for (const [dumpArgs, restoreArgs] of [[['--tcp-close'], []], [['--tcp-established'], ['--tcp-close']]]) {
      const p = await startPython(script);
      const client = createConnection(Number(p.readyInfo.port), '127.0.0.1');
      await new Promise((res) => client.once('connect', res));
      client.on('error', () => {});
      const dir = join(work, `img-${dumpArgs[0]}`);
      const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, ...dumpArgs);
      expect(d.code, d.stderr).toBe(0);
      await p.exited;
      const r = await restoreDetached(dir, join(work, `pid-${dumpArgs[0]}`), restoreArgs);
      expect(r.result.code, r.result.stderr).toBe(0);
      r.writeLine('look');
      expect(await r.waitForLine(/^STATE/)).toBe("STATE 7 READ b'' WRITE EPIPE");
      expect(lockRulesOf(Number(p.readyInfo.port))).toEqual([]);
      client.destroy();
      await killPid(r.pid);
    }
  });

  it('--tcp-established: a restore that fails before its connection is rebuilt (the listener port taken) leaves no lock rule', async () => {
    const work = tmpDir('tsnap-files-');
    const p = await startPython(`
import os, socket, time
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
os.closerange(3, l.fileno())
print('READY port=%d' % l.getsockname()[1], flush=True)
c, _ = l.accept()
time.sleep(1000)
`);
    const port = Number(p.readyInfo.port);
    const client = createConnection(port, '127.0.0.1');
    await new Promise((res) => client.once('connect', res));
    client.on('error', () => {});
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tcp-established');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const rules = () => lockRulesOf(port);
    expect(rules().length).toBe(2);
    // Someone else listens on the port meanwhile: the restore fails at the listener, before the connection.
    const squatter = await startPython(`
import socket, time
s = socket.socket(); s.bind(('127.0.0.1', ${port})); s.listen()
print('READY', flush=True)
time.sleep(1000)
`);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code).toBe(ExitCode.restoreFailed);
    expect(r.result.stderr).toContain(`cannot bind 127.0.0.1:${port} again: EADDRINUSE`);
    expect(rules()).toEqual([]);
    await squatter.kill();
    client.destroy();
  });

  it('an fd whose signals (F_SETOWN) go to a process outside the dump is refused before the freeze, naming it', async () => {
    const p = await startPython(`import os, fcntl, time
r, w = os.pipe()
fcntl.fcntl(r, fcntl.F_SETOWN, os.getppid())
print('READY fd=%d' % r, flush=True)
time.sleep(1000)`);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(tmpDir('tsnap-files-'), 'img'));
    expect(d.code).toBe(ExitCode.unsupported);
    expect(d.stderr).toMatch(new RegExp(`fd ${p.readyInfo.fd} of process ${p.pid} sends its signals \\(F_SETOWN\\) to process ${process.pid}, which is not part of the dump`));
    expect(readFileSync(`/proc/${p.pid}/status`, 'utf8')).toMatch(/TracerPid:\s+0\n/);
  });

  it('--tcp-established: a listener whose port has an established connection binds again, and both work after restore', async () => {
    const work = tmpDir('tsnap-files-');
    const p = await startPython(`
import socket, sys
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
print('READY port=%d' % l.getsockname()[1], flush=True)
c, _ = l.accept()
# The listener on a higher fd than the connection: restored after it.
import os
os.dup2(l.fileno(), 60)
l.close()
l = socket.socket(fileno=60)
for cmd in sys.stdin:
    if cmd.startswith('echo'):
        c.sendall(c.recv(100))
    elif cmd.startswith('accept'):
        d, _ = l.accept()
        d.sendall(b'new\\n')
        d.close()
`);
    const port = Number(p.readyInfo.port);
    const client = createConnection(port, '127.0.0.1');
    await new Promise((res) => client.once('connect', res));
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tcp-established');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    const got = new Promise<string>((res) => client.once('data', (b) => res(b.toString())));
    client.write('ping\n');
    r.writeLine('echo');
    expect(await got).toBe('ping\n');
    const second = createConnection(port, '127.0.0.1');
    const hello = new Promise<string>((res) => second.once('data', (b) => res(b.toString())));
    r.writeLine('accept');
    expect(await hello).toBe('new\n');
    second.destroy();
    client.destroy();
  });

  it('files and directories deleted while open come back deleted, with their contents, holes, modes and offsets', async () => {
    const work = tmpDir('tsnap-files-');
    const p = await startPython(`
import os, sys
d = ${JSON.stringify(work)}
path = os.path.join(d, 'scratch.db')
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
os.write(fd, b'head' * 1024)          # 4 KiB of data
os.lseek(fd, 1 << 20, os.SEEK_SET)    # a 1 MiB hole
os.write(fd, b'tail')
os.lseek(fd, 5, os.SEEK_SET)
fd2 = os.open('/proc/self/fd/%d' % fd, os.O_RDONLY)   # another open file of the same inode
os.lseek(fd2, 4, os.SEEK_SET)
os.unlink(path)
os.mkdir(os.path.join(d, 'gone'))
dfd = os.open(os.path.join(d, 'gone'), os.O_RDONLY | os.O_DIRECTORY)
os.rmdir(os.path.join(d, 'gone'))
print('READY', flush=True)
for cmd in sys.stdin:
    st = os.fstat(fd)
    a = os.read(fd, 3)
    b = os.read(fd2, 4)
    h = os.open('/proc/self/fd/%d' % fd, os.O_RDONLY)
    hole = os.lseek(h, 0, os.SEEK_HOLE)
    os.close(h)
    tail = os.pread(fd, 4, 1 << 20)
    ds = os.fstat(dfd)
    print('pos=%r other=%r size=%d mode=%o links=%d hole=%d tail=%r dirlinks=%d' % (a, b, st.st_size, st.st_mode & 0o777, st.st_nlink, hole, tail, ds.st_nlink), flush=True)
`);
    const ask = async (r: { writeLine(s: string): void; waitForLine(re: RegExp): Promise<string> }) => { r.writeLine('check'); return r.waitForLine(/^pos=/); };
    const want = await ask(p);
    expect(want).toBe("pos=b'ead' other=b'head' size=1048580 mode=640 links=0 hole=4096 tail=b'tail' dirlinks=0");
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.result.stderr).not.toMatch(/restore check/);
    // The same answers: the offsets moved on by the first check in both.
    expect(await ask(r)).toBe("pos=b'hea' other=b'head' size=1048580 mode=640 links=0 hole=4096 tail=b'tail' dirlinks=0");
    expect(readdirSync(work).sort()).toEqual(['img', 'pid']);
  });

  it('a file lease (F_SETLEASE) is held again after restore', async () => {
    const work = tmpDir('tsnap-files-');
    const file = join(work, 'leased');
    const p = await startPython(`import fcntl, os, sys
fd = os.open(${JSON.stringify(file)}, os.O_RDONLY | os.O_CREAT, 0o644)
fcntl.fcntl(fd, 1024, fcntl.F_RDLCK)  # F_SETLEASE
print('READY', flush=True)
for cmd in sys.stdin:
    print('LEASE %d' % fcntl.fcntl(fd, 1025), flush=True)  # F_GETLEASE
`);
    const r = await dumpKillRestore(p, work);
    r.writeLine('check');
    expect(await r.waitForLine(/^LEASE/)).toBe('LEASE 0'); // F_RDLCK
  });

  it('a lease being broken comes back as the lease it is broken to; one that restore could not take is refused', async () => {
    const work = tmpDir('tsnap-files-');
    const file = join(work, 'leased');
    // A write lease on a read-only fd, broken by a reader (to F_RDLCK); a
    // write lease on a read-write fd broken the same way cannot be taken again.
    const program = (mode: string, path: string) => `import fcntl, os, signal, sys
signal.signal(signal.SIGIO, lambda s, f: print('SIGIO', flush=True))
fd = os.open(${JSON.stringify(path)}, ${mode} | os.O_CREAT, 0o644)
fcntl.fcntl(fd, 1024, fcntl.F_WRLCK)  # F_SETLEASE
try:
    os.open(${JSON.stringify(path)}, os.O_RDONLY | os.O_NONBLOCK)
except BlockingIOError:
    pass
print('READY', flush=True)
for cmd in sys.stdin:
    print('LEASE %d' % fcntl.fcntl(fd, 1025), flush=True)  # F_GETLEASE
`;
    const p = await startPython(program('os.O_RDONLY', file));
    p.writeLine('check');
    expect(await p.waitForLine(/^LEASE/)).toBe('LEASE 0'); // being broken to F_RDLCK
    const r = await dumpKillRestore(p, work);
    r.writeLine('check');
    expect(await r.waitForLine(/^LEASE/)).toBe('LEASE 0');
    // The holder had its signal before the dump; restore sends no other.
    expect(r.lines.filter((l) => l === 'SIGIO')).toEqual([]);

    const q = await startPython(program('os.O_RDWR', `${file}2`));
    const d = await tsnap('dump', '--pid', String(q.pid), '--dir', join(work, 'img2'));
    expect(d.code).toBe(5);
    expect(d.stderr).toMatch(/lease being broken down to a read lease while the file is open for writing/);
    q.writeLine('check');
    expect(await q.waitForLine(/^LEASE/)).toBe('LEASE 0');
  });

  it('an O_PATH fd (no owner, no lease to read) dumps and comes back', async () => {
    const work = tmpDir('tsnap-files-');
    const p = await startPython(`import os, sys
fd = os.open(${JSON.stringify(work)}, os.O_PATH)
print('READY fd=%d' % fd, flush=True)
for cmd in sys.stdin:
    print('PATH %s' % ('yes' if os.readlink('/proc/self/fd/%d' % fd) == ${JSON.stringify(work)} else 'no'), flush=True)
`);
    const r = await dumpKillRestore(p, work);
    const flags = parseInt(/^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/${r.pid}/fdinfo/${p.readyInfo.fd}`, 'utf8'))![1], 8);
    expect(flags & 0o10000000).toBe(0o10000000); // O_PATH
    r.writeLine('check');
    expect(await r.waitForLine(/^PATH/)).toBe('PATH yes');
  });

  it('an fd in flight in a unix stream socket (SCM_RIGHTS) comes back in flight (test/scm.test.ts has the rest)', async () => {
    const work = tmpDir('tsnap-files-');
    const p = await startPython(`import os, socket, sys
os.closerange(3, 256)
a, b = socket.socketpair()
r = os.open('/dev/null', os.O_RDONLY)
socket.send_fds(a, [b'x'], [r])
os.close(r)
print('READY', flush=True)
for cmd in sys.stdin:
    msg, fds, _, _ = socket.recv_fds(b, 16, 4)
    print('GOT %r %d %s' % (msg, len(fds), os.readlink('/proc/self/fd/%d' % fds[0]) if fds else '-'), flush=True)
`);
    const r = await dumpKillRestore(p, work);
    r.writeLine('recv');
    expect(await r.waitForLine(/^GOT/)).toBe("GOT b'x' 1 /dev/null");
  });

  it('socket options come back: keepalive and its timers, linger, broadcast, TOS, and a bind to an address only FREEBIND allows', async () => {
    const p = await startPython(`import socket, struct, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
l.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
l.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 5))
l.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
l.bind(('127.0.0.1', 0)); l.listen()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
f = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
f.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND
f.bind(('2001:db8::1', 0))                # documentation prefix: not on this host, nothing is sent
f.setsockopt(socket.IPPROTO_IPV6, 78, 0)
def state():
    return 'ka=%d idle=%d linger=%r tos=%d bc=%d fb=%s' % (
        l.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), l.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        struct.unpack('ii', l.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)), l.getsockopt(socket.IPPROTO_IP, socket.IP_TOS),
        u.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST), f.getsockname()[0])
print('READY', flush=True)
for cmd in sys.stdin:
    print('STATE ' + state(), flush=True)
`);
    p.writeLine('state');
    const before = await p.waitForLine(/^STATE/);
    expect(before).toBe('STATE ka=1 idle=77 linger=(1, 5) tos=16 bc=1 fb=2001:db8::1');
    const work = tmpDir('tsnap-files-');
    const r = await dumpKillRestore(p, work);
    r.writeLine('state');
    expect(await r.waitForLine(/^STATE/)).toBe(before);
  });

  it('a file made with O_TMPFILE (never named) comes back with its contents', async () => {
    const work = tmpDir('tsnap-files-');
    const p = await startPython(`import os, sys
fd = os.open(${JSON.stringify(work)}, os.O_TMPFILE | os.O_RDWR, 0o600)
os.write(fd, b'tmpfile data')
print('READY', flush=True)
for cmd in sys.stdin:
    print('DATA %r' % os.pread(fd, 64, 0), flush=True)
`);
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toMatch(/restore check/);
    r.writeLine('check');
    expect(await r.waitForLine(/^DATA/)).toBe("DATA b'tmpfile data'");
  });
});


/**
 * Unix sockets as programs hold them, and socket state programs count on:
 * pairs whose peer was closed (data then EOF, EPIPE, ECONNRESET as before),
 * datagram sockets connected one way (several to one, one to itself) with
 * their queues, a client still waiting in a listener's queue, names
 * relative to the process's cwd, shutdown() of unix and UDP sockets, and
 * classic BPF filters (eBPF ones are refused, naming the fd). Each restored
 * process reports what its own reads and writes return.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { existsSync, readFileSync, lstatSync } from 'node:fs';
import { join } from 'node:path';
import { startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { waitPidsFree } from './helpers/processes.js';
import { tsnap, dumpKillRestore, restoreDetached, killPid } from './helpers/tsnap.js';
import { ExitCode } from '../src/errors.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const PRELUDE = `import os, socket, struct, sys, errno, ctypes
os.closerange(3, 1024)
def rd(s, n=100):
    try: return s.recv(n).decode() or 'EOF'
    except OSError as x: return errno.errorcode[x.errno]
def wr(s, data=b'x'):
    try: s.send(data); return 'sent'
    except OSError as x: return errno.errorcode[x.errno]
`;

describe('unix sockets', () => {
  it('a pair whose peer was closed keeps its queue: data, then EOF (stream, seqpacket), EAGAIN (datagram), EPIPE / ECONNREFUSED on write, ECONNRESET when the peer left data unread', async () => {
    const work = tmpDir('tsnap-unix-');
    const p = await startPython(`${PRELUDE}
a, b = socket.socketpair(); b.sendall(b'left-behind'); b.close()
c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET); d.send(b'r1'); d.send(b'r2'); d.close()
e, f = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM); f.send(b'g1'); f.close()
g, h = socket.socketpair(); g.send(b'unread'); h.close()
print('READY', flush=True)
for line in sys.stdin:
    e.setblocking(False)
    print('GOT ' + ' '.join([rd(a), rd(a), wr(a), rd(c), rd(c), rd(c), rd(e), rd(e), wr(e), rd(g), rd(g)]), flush=True)
`);
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toMatch(/restore check/);
    r.writeLine('go');
    // What the original answers to the same reads and writes (checked on a live one).
    expect(await r.waitForLine(/^GOT/)).toBe('GOT left-behind EOF EPIPE r1 r2 EOF g1 EAGAIN ECONNREFUSED ECONNRESET EOF');
  });

  it('a pending ECONNRESET survives a --leave-running dump (reading the queue would clear it) and comes back; a datagram-like queue behind one is refused', async () => {
    const work = tmpDir('tsnap-unix-');
    const script = `${PRELUDE}
g, h = socket.socketpair(); g.send(b'unread'); h.sendall(b'data'); h.close()
print('READY', flush=True)
for line in sys.stdin:
    print('GOT ' + ' '.join([rd(g), rd(g), rd(g)]), flush=True)
`;
    const p = await startPython(script);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    p.writeLine('go');
    expect(await p.waitForLine(/^GOT/)).toBe('GOT data ECONNRESET EOF');
    await p.kill();
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.result.stderr).not.toMatch(/restore check/);
    r.writeLine('go');
    expect(await r.waitForLine(/^GOT/)).toBe('GOT data ECONNRESET EOF');

    const q = await startPython(`${PRELUDE}
import time
s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET); s1.send(b'u'); s2.send(b'm'); s2.close()
print('READY fd=%d' % s1.fileno(), flush=True)
time.sleep(1000)
`);
    const e = await tsnap('dump', '--pid', String(q.pid), '--dir', join(work, 'img2'));
    expect(e.code).toBe(ExitCode.unsupported);
    expect(e.stderr).toMatch(new RegExp(`fd ${q.readyInfo.fd} of process ${q.pid} is a unix socket with a socket error pending and data queued`));
    expect(q.alive()).toBe(true);
  });

  it('datagram sockets connected one way (two to one receiver, one to itself) and a client not yet accepted connect again by name, relative names in the cwd of the process, queues kept', async () => {
    const work = tmpDir('tsnap-unix-');
    const p = await startPython(`${PRELUDE}
os.chdir(sys.argv[1])
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); srv.bind('srv.sock')
c1 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c1.connect('srv.sock'); c1.send(b'q1')
c2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c2.connect('srv.sock'); c2.send(b'q2')
me = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); name = b'\\0tsnap-self-%d' % os.getpid()
me.bind(name); me.connect(name); me.send(b'self')
l = socket.socket(socket.AF_UNIX); l.bind('listen.sock'); l.listen(3)
k = socket.socket(socket.AF_UNIX); k.connect('listen.sock')
print('READY', flush=True)
for line in sys.stdin:
    for s in (srv, me): s.setblocking(False)
    got = [rd(srv), rd(srv), rd(srv), rd(me), rd(me)]
    got += [wr(c1, b'n1'), wr(c2, b'n2'), wr(me, b'n3'), rd(srv), rd(srv), rd(me)]
    conn, _ = l.accept(); k.send(b'hi'); got.append(rd(conn))
    got += [srv.getsockname(), l.getsockname(), repr(c1.getpeername()), str(l.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))]
    print('GOT ' + ' '.join(got), flush=True)
`, [work], { cwd: work });
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toMatch(/restore check/);
    // Bound where the process's cwd was, not in tsnap's.
    expect(lstatSync(join(work, 'srv.sock')).isSocket()).toBe(true);
    expect(lstatSync(join(work, 'listen.sock')).isSocket()).toBe(true);
    expect(existsSync(join(process.cwd(), 'srv.sock'))).toBe(false);
    r.writeLine('go');
    expect(await r.waitForLine(/^GOT/)).toBe("GOT q1 q2 EAGAIN self EAGAIN sent sent sent n1 n2 n3 hi srv.sock listen.sock 'srv.sock' 1");
  });

  it('in a tree: a child connected one way to a receiver of its parent, and a connection of the child waiting in the listener of its parent, connect again', async () => {
    const work = tmpDir('tsnap-unix-');
    const p = await startPython(`${PRELUDE}
import signal
name = b'\\0tsnap-tree-%d' % os.getpid()
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); srv.bind(name + b'-d')
l = socket.socket(socket.AF_UNIX); l.bind(name + b'-s'); l.listen(2)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
rp, wp = os.pipe()
pid = os.fork()
if pid == 0:
    srv.close(); l.close(); os.close(rp)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c.connect(name + b'-d'); c.send(b'before')
    k = socket.socket(socket.AF_UNIX); k.connect(name + b'-s')
    os.close(wp)
    signal.sigwait({signal.SIGUSR1})
    c.send(b'after'); k.send(b'streamed')
    signal.sigwait({signal.SIGUSR1})
    os._exit(0)
os.close(wp); os.read(rp, 1); os.close(rp)  # EOF: the child is connected
print('READY child=%d' % pid, flush=True)
for line in sys.stdin:
    os.kill(pid, signal.SIGUSR1)
    conn, _ = l.accept()
    print('GOT ' + ' '.join([rd(srv), rd(srv), rd(conn)]), flush=True)
`);
    const child = Number(p.readyInfo.child);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--tree');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    // Same pids: wait until the child is reaped (PID 1 reaps orphans late here).
    await waitPidsFree([child]);
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.result.stderr).not.toMatch(/restore check/);
    r.writeLine('go');
    expect(await r.waitForLine(/^GOT/)).toBe('GOT before after streamed');
    await killPid(child);
  });

  it('shutdown() of unix pairs and UDP sockets, and a classic BPF filter, come back', async () => {
    const work = tmpDir('tsnap-unix-');
    const p = await startPython(`${PRELUDE}
signal_ = __import__('signal'); signal_.signal(signal_.SIGPIPE, signal_.SIG_IGN)
a, b = socket.socketpair(); a.shutdown(socket.SHUT_RD)
da, db = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM); da.shutdown(socket.SHUT_RDWR)
u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u1.bind(('127.0.0.1', 0))
u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u2.bind(('127.0.0.1', 0))
u1.connect(u2.getsockname()); u2.connect(u1.getsockname()); u1.shutdown(socket.SHUT_WR)
flt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); flt.bind(('127.0.0.1', 0))
# Two instructions: accept packets of UDP length < 8 (none), drop the rest.
insns = ctypes.create_string_buffer(struct.pack('HBBI', 0x28, 0, 0, 4) + struct.pack('HBBI', 6, 0, 0, 0))
flt.setsockopt(socket.SOL_SOCKET, 26, struct.pack('HxxxxxxQ', 2, ctypes.addressof(insns)))
print('READY', flush=True)
for line in sys.stdin:
    u1.setblocking(False); flt.setblocking(False)
    got = [wr(a), rd(b, 1), wr(b), wr(da), wr(db), wr(u1), wr(u2, b'to-u1'), rd(u1)]
    u2.sendto(b'filtered', flt.getsockname())
    buf = ctypes.create_string_buffer(64); n = ctypes.c_uint(8)  # SO_GET_FILTER counts in instructions
    ctypes.CDLL(None).getsockopt(flt.fileno(), socket.SOL_SOCKET, 26, buf, ctypes.byref(n))
    got += [rd(flt), buf.raw[:n.value * 8].hex()]
    print('GOT ' + ' '.join(got), flush=True)
`);
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toMatch(/restore check/);
    r.writeLine('go');
    expect(await r.waitForLine(/^GOT/)).toBe('GOT sent x EPIPE EPIPE EPIPE EPIPE sent to-u1 EAGAIN 2800000004000000' + '0600000000000000');
  });

  it('an eBPF socket filter is refused before the freeze, naming the fd, the process untouched', async () => {
    const work = tmpDir('tsnap-unix-');
    const p = await startPython(`${PRELUDE}
import time
libc = ctypes.CDLL(None, use_errno=True)
code = ctypes.create_string_buffer(bytes.fromhex('b700000000000000' '9500000000000000'))
lic = ctypes.create_string_buffer(b'GPL')
attr = ctypes.create_string_buffer(struct.pack('IIQQ', 1, 2, ctypes.addressof(code), ctypes.addressof(lic)) + bytes(96))
prog = libc.syscall(321, 5, attr, 128)  # bpf(BPF_PROG_LOAD): a socket filter dropping everything
if prog < 0: print('NOBPF errno=%d' % ctypes.get_errno(), flush=True); sys.exit(0)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 50, prog)  # SO_ATTACH_BPF
os.close(prog)
print('READY fd=%d' % s.fileno(), flush=True)
time.sleep(1000)
`, [], { readyPattern: /^(READY|NOBPF)/ });
    if (p.readyLine.startsWith('NOBPF')) return; // no bpf() here: nothing to refuse
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code).toBe(ExitCode.unsupported);
    expect(d.stderr).toMatch(new RegExp(`fd ${p.readyInfo.fd} .*eBPF socket filter`));
    expect(d.stderr.trim().split('\n').length).toBe(1);
    expect(existsSync(join(work, 'img'))).toBe(false);
    expect(readFileSync(`/proc/${p.pid}/status`, 'utf8')).toMatch(/TracerPid:\s+0\n/);
    expect(p.alive()).toBe(true);
  });

  it('a datagram queue longer than restore can queue again (its peer sent past net.unix.max_dgram_qlen) is refused before the freeze, naming it', async () => {
    const work = tmpDir('tsnap-unix-');
    const max = Number(readFileSync('/proc/sys/net/unix/max_dgram_qlen', 'utf8'));
    const p = await startPython(`${PRELUDE}
import time
r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); r.bind(b'\\0tsnap-qlen-r-%d' % os.getpid())
x = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); x.bind(b'\\0tsnap-qlen-x-%d' % os.getpid())
r.connect(x.getsockname())  # r's peer may queue past the limit
for i in range(${max} + 5): x.sendto(b'm%d' % i, r.getsockname())
print('READY fd=%d' % r.fileno(), flush=True)
time.sleep(1000)
`);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code).toBe(ExitCode.unsupported);
    expect(d.stderr).toMatch(new RegExp(`fd ${p.readyInfo.fd} of process ${p.pid} has ${max + 5} datagrams queued, more than net.unix.max_dgram_qlen`));
    expect(readFileSync(`/proc/${p.pid}/status`, 'utf8')).toMatch(/TracerPid:\s+0\n/);
  });

  it('a unix datagram socket connected to a receiver outside the dump is refused before the freeze, naming it; with --ext-unix-sk it connects to that name again', async () => {
    const work = tmpDir('tsnap-unix-');
    const rcv = await startPython(`${PRELUDE}
r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); r.bind(sys.argv[1])
print('READY', flush=True)
while True: print('RCV ' + rd(r), flush=True)
`, [join(work, 'rcv.sock')]);
    const p = await startPython(`${PRELUDE}
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.connect(sys.argv[1]); s.send(b'before')
print('READY fd=%d' % s.fileno(), flush=True)
for line in sys.stdin: print('SENT ' + wr(s, line.strip().encode()), flush=True)
`, [join(work, 'rcv.sock')]);
    await rcv.waitForLine(/^RCV before/);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code).toBe(ExitCode.unsupported);
    expect(d.stderr).toMatch(new RegExp(`fd ${p.readyInfo.fd} of process ${p.pid} is a unix socket connected to socket:\\[\\d+\\] outside.*--ext-unix-sk`));
    expect(readFileSync(`/proc/${p.pid}/status`, 'utf8')).toMatch(/TracerPid:\s+0\n/);
    expect(p.alive() && rcv.alive()).toBe(true);

    const r = await dumpKillRestore(p, work, ['--ext-unix-sk']);
    expect(r.result.stderr).not.toMatch(/restore check/);
    r.writeLine('after');
    expect(await r.waitForLine(/^SENT/)).toBe('SENT sent');
    await rcv.waitForLine(/^RCV after/);
  });
});

/**
 * Pipes and FIFOs as real programs hold them: a pipe whose other end every
 * process has closed (a producer that exited, a reader gone) comes back
 * half-closed with its unread bytes; one whose other end lives on outside
 * the dump is refused; a FIFO deleted while open comes back deleted, with
 * its bytes, one FIFO for all its fds; a FIFO on stdin is reopened by its
 * path rather than replaced by restore's own stdin.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { closeSync, existsSync, mkdirSync, openSync, readlinkSync, rmSync, writeSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { waitPidsFree } from './helpers/processes.js';
import { tsnap, readImage, dumpKillRestore, restoreDetached } from './helpers/tsnap.js';
import { ExitCode } from '../src/errors.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

/** Closes every fd above 2 the interpreter was given (the runner's shell may leak some). */
const CLOSE_FDS = `
import os
os.closerange(3, 1024)
`;

describe('pipes and FIFOs', () => {
  it('a half-closed pipe comes back half-closed: the bytes, then EOF; a write end without readers gets EPIPE', async () => {
    const work = tmpDir('tsnap-pipes-');
    const script = `${CLOSE_FDS}
import signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
r, w = os.pipe()
os.write(w, b"left-behind")
os.close(w)                 # the producer is gone: no writer anywhere
r2, w2 = os.pipe()
os.write(w2, b"never-read")
os.close(r2)                # the reader is gone
print("READY r=%d w=%d" % (r, w2), flush=True)
sys.stdin.readline()
got = os.read(r, 100)
eof = os.read(r, 100)
try:
    os.write(w2, b"x")
    wr = "wrote"
except BrokenPipeError:
    wr = "EPIPE"
print("RESULT %s %r %s" % (got.decode(), eof, wr), flush=True)
`;
    const p = await startPython(script);
    const r = await dumpKillRestore(p, work);
    const fds = readImage(join(work, 'img')).process!.fds;
    expect(fds.find((f) => f.fd === Number(p.readyInfo.r))!.pipe).toMatchObject({ closedEnd: 'write' });
    expect(fds.find((f) => f.fd === Number(p.readyInfo.w))!.pipe).toMatchObject({ closedEnd: 'read' });
    expect(r.result.stderr).not.toContain('restore check');
    r.writeLine('go');
    expect(await r.waitForLine(/^RESULT/)).toBe("RESULT left-behind b'' EPIPE");
  });

  it('stdin from a producer that has exited is that pipe again after restore (its bytes, then EOF), not restore\'s stdin', async () => {
    const work = tmpDir('tsnap-pipes-');
    const script = `${CLOSE_FDS}
import signal
r, w = os.pipe()
os.write(w, b"last-words\\n")
os.close(w)
os.dup2(r, 0)
os.close(r)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
print("READY", flush=True)
signal.sigwait({signal.SIGUSR1})   # sent once restored
data = os.read(0, 100)
eof = os.read(0, 100)
print("RESULT %r %r" % (data, eof), flush=True)
`;
    const p = await startPython(script, [], { stdin: 'ignore' });
    const r = await dumpKillRestore(p, work);
    expect(readImage(join(work, 'img')).process!.fds.find((f) => f.fd === 0)!.pipe).toMatchObject({ closedEnd: 'write' });
    r.writeLine('from-restore-stdin');
    process.kill(r.pid, 'SIGUSR1');
    expect(await r.waitForLine(/^RESULT/)).toBe("RESULT b'last-words\\n' b''");
  });

  it('a half-closed pipe shared by a parent and its child (dump --tree) comes back in both, the same pipe', async () => {
    const work = tmpDir('tsnap-pipes-');
    const script = `${CLOSE_FDS}
import signal, sys, time
r, w = os.pipe()
os.write(w, b"for-the-child")
os.close(w)
child = os.fork()
if child == 0:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    signal.sigwait({signal.SIGUSR1})
    got = os.read(r, 100)
    eof = os.read(r, 100)
    print("CHILD %s %r" % (got.decode(), eof), flush=True)
    os._exit(0)
print("READY child=%d" % child, flush=True)
sys.stdin.readline()
os.kill(child, signal.SIGUSR1)
os.waitpid(child, 0)
print("PARENT %r" % os.read(r, 100), flush=True)
`;
    const p = await startPython(script);
    const child = Number(p.readyInfo.child);
    const d = await tsnap('dump', '--tree', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    // The killed child is an orphan that PID 1 reaps late: its pid must be free for the restore.
    await waitPidsFree([child]);
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('go');
    expect(await r.waitForLine(/^CHILD/)).toBe("CHILD for-the-child b''");
    expect(await r.waitForLine(/^PARENT/)).toBe("PARENT b''");
  });

  it('a pipe whose other end a process outside the dump still holds is refused before the freeze, naming it', async () => {
    const work = tmpDir('tsnap-pipes-');
    const script = `${CLOSE_FDS}
import time
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(r)
    time.sleep(600)         # holds the write end, outside a dump of its parent
    os._exit(0)
os.close(w)
print("READY r=%d child=%d" % (r, child), flush=True)
time.sleep(600)
`;
    const p = await startPython(script);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code).toBe(ExitCode.unsupported);
    expect(d.stderr).toMatch(new RegExp(`fd ${p.readyInfo.r} of process ${p.pid} is one end of pipe:\\[\\d+\\] whose other end is outside the dump, in process ${p.readyInfo.child} \\(python3, its fd \\d+\\); dump that process too, with --tree`));
    expect(d.stderr.trim().split('\n').length).toBe(1);
    expect(existsSync(join(work, 'img'))).toBe(false);
    expect(p.alive()).toBe(true);
  });

  it('a pipe the process holds both ends of is refused when a process outside the dump holds an end too', async () => {
    const work = tmpDir('tsnap-pipes-');
    const script = `${CLOSE_FDS}
import time
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(r)
    time.sleep(600)         # keeps a write end, outside a dump of its parent
    os._exit(0)
print("READY r=%d child=%d" % (r, child), flush=True)
time.sleep(600)
`;
    const p = await startPython(script);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code).toBe(ExitCode.unsupported);
    expect(d.stderr).toMatch(new RegExp(`of process ${p.pid} is one end of pipe:\\[\\d+\\], which process ${p.readyInfo.child} \\(python3\\) outside the dump holds too`));
    expect(existsSync(join(work, 'img'))).toBe(false);
    expect(p.alive()).toBe(true);
    // With its child in the dump, the same pipe is fine.
    const t = await tsnap('dump', '--tree', '--leave-running', '--pid', String(p.pid), '--dir', join(work, 'img2'));
    expect(t.code, t.stderr).toBe(0);
  });

  it('a FIFO deleted while open comes back deleted, with its bytes, one FIFO for its two fds', async () => {
    const work = tmpDir('tsnap-pipes-');
    const fifo = join(work, 'ctl.fifo');
    const script = `${CLOSE_FDS}
import stat, sys
os.mkfifo(${JSON.stringify(fifo)}, 0o640)
rw = os.open(${JSON.stringify(fifo)}, os.O_RDWR)
ro = os.open(${JSON.stringify(fifo)}, os.O_RDONLY | os.O_NONBLOCK)
os.write(rw, b"queued")
os.unlink(${JSON.stringify(fifo)})
print("READY rw=%d ro=%d" % (rw, ro), flush=True)
sys.stdin.readline()
first = os.read(ro, 100)
os.write(rw, b"again")
second = os.read(ro, 100)
st = os.fstat(ro)
print("RESULT %s %s %s %o" % (first.decode(), second.decode(), os.readlink("/proc/self/fd/%d" % ro), stat.S_IMODE(st.st_mode)), flush=True)
`;
    const p = await startPython(script);
    const r = await dumpKillRestore(p, work);
    expect(existsSync(fifo)).toBe(false); // made again for the restore, and deleted again
    expect(r.result.stderr).not.toContain('restore check');
    r.writeLine('go');
    expect(await r.waitForLine(/^RESULT/)).toBe(`RESULT queued again ${fifo} (deleted) 640`);
  });

  it('a deleted FIFO whose directory is gone too by the restore comes back in a directory of tsnap\'s own, with a warning', async () => {
    const work = tmpDir('tsnap-pipes-');
    const dir = join(work, 'run');
    mkdirSync(dir);
    const fifo = join(dir, 'ctl.fifo');
    const script = `${CLOSE_FDS}
import sys
os.mkfifo(${JSON.stringify(fifo)})
fd = os.open(${JSON.stringify(fifo)}, os.O_RDWR)
os.write(fd, b"kept")
os.unlink(${JSON.stringify(fifo)})
print("READY fd=%d" % fd, flush=True)
sys.stdin.readline()
print("RESULT %s" % os.read(fd, 100).decode(), flush=True)
`;
    const p = await startPython(script);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    rmSync(dir, { recursive: true });
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.result.stderr).toContain(`the directory of the FIFO ${fifo} (deleted) is gone`);
    r.writeLine('go');
    expect(await r.waitForLine(/^RESULT/)).toBe('RESULT kept');
    expect(readlinkSync(`/proc/${r.pid}/fd/${p.readyInfo.fd}`)).toMatch(/\/tsnap-fifo-\w+\/ctl\.fifo \(deleted\)$/);
  });

  it('a FIFO on stdin is reopened by its path: the restored program reads what is written to the FIFO, not restore\'s stdin', async () => {
    const work = tmpDir('tsnap-pipes-');
    const fifo = join(work, 'in.fifo');
    execFileSync('mkfifo', ['-m', '600', fifo]);
    // The test is the writer, and holds the FIFO open throughout (as a
    // feeding process would), so that neither side's open blocks.
    const writer = openSync(fifo, 'r+');
    try {
      const script = `${CLOSE_FDS}
fd = os.open(${JSON.stringify(fifo)}, os.O_RDONLY)
os.dup2(fd, 0)
os.close(fd)
print("READY", flush=True)
buf = b""
while True:
    chunk = os.read(0, 100)
    if not chunk:
        break
    buf += chunk
    while b"\\n" in buf:
        line, buf = buf.split(b"\\n", 1)
        print("GOT " + line.decode(), flush=True)
`;
      const p = await startPython(script, [], { stdin: 'ignore' });
      writeSync(writer, 'before\n');
      await p.waitForLine(/^GOT before/);
      const r = await dumpKillRestore(p, work);
      expect(readlinkSync(`/proc/${r.pid}/fd/0`)).toBe(fifo);
      r.writeLine('from-restore-stdin');
      writeSync(writer, 'after\n');
      expect(await r.waitForLine(/^GOT /)).toBe('GOT after');
    } finally {
      closeSync(writer);
    }
  });
});

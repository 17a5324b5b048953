/**
 * Live migration over loopback between two real tsnap processes: the
 * migrated process checks its own memory on the receiver and goes on
 * counting; the source is gone. Failures leave the source running.
 */
import { describe, it, expect, afterAll, afterEach } from 'vitest';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { compileC, startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, startTsnap, TSNAP_BIN, killPid } from './helpers/tsnap.js';
import { readStatus } from '../src/proc/index.js';
import { findHolders } from '../src/track/untrack.js';
import { FrameReader, Msg, encodeDoc, encodeFrame, decodeDoc, send, WIRE_MAGIC, WIRE_VERSION, type Frame } from '../src/migrate/wire.js';
import { crc32 } from '../src/image/checksum.js';
import { readMetaFile, writeMetaFile } from '../src/image/metadata.js';
import { FileKind, type Inventory } from '../formats/schema.js';
import { ExitCode } from '../src/errors.js';
import { lockRulesOf } from './helpers/lock-rules.js';
import { inOtherPidNs } from './helpers/other-host.js';
import { descendantsOf, killTree } from './helpers/processes.js';
import { eventually } from './helpers/eventually.js';
import { startServe } from './helpers/serve.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const servers: ChildProcess[] = [];
const restored: number[] = [];
afterEach(async () => {
  // With what they run: serve in a pid namespace is unshare's child, and must be gone, not dying, when the test ends.
  for (const s of servers.splice(0)) await killTree(s.pid!);
  for (const pid of restored.splice(0)) await killPid(pid);
});

/**
 * `tsnap serve` on a port the kernel picks (port 0, read back from its
 * "listening" event: counted port ranges collided across workers), with
 * `prefix` (e.g. unshare) in front. Resolves once it listens.
 */
async function launchServe(prefix: string[], dir: string, extra: string[]): Promise<{ port: number; proc: ChildProcess; events: string[] }> {
  const s = await startServe(dir, extra, prefix);
  servers.push(s.proc);
  return s;
}

function startServer(dir: string, extra: string[] = []): Promise<{ port: number; proc: ChildProcess; events: string[] }> {
  return launchServe([], dir, extra);
}

/** A hand-driven peer of tsnap serve: speaks (or breaks) the wire protocol itself. */
async function rawPeer(port: number): Promise<{ sock: Socket; reader: FrameReader; closed: Promise<void> }> {
  const sock = connect({ host: '127.0.0.1', port });
  sock.on('error', () => {});
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  await new Promise((r) => sock.once('connect', r));
  return { sock, reader: new FrameReader(sock), closed };
}

const hello = (fields: Record<string, unknown> = {}) => encodeDoc(Msg.Hello, { magic: WIRE_MAGIC, version: WIRE_VERSION, token: 'sesame', pid: 4242, tool: 'test', ...fields });

function errorOf(f: Frame | null): { code: string; message: string } {
  expect(f?.type).toBe(Msg.Error);
  return decodeDoc<{ code: string; message: string }>(f!);
}

/** Sends one file of an iteration, as the sender does. */
async function sendFile(sock: Socket, name: string, data: Buffer): Promise<void> {
  await send(sock, encodeDoc(Msg.FileBegin, { name }));
  await send(sock, encodeFrame(Msg.FileData, data));
  await send(sock, encodeDoc(Msg.FileEnd, { length: data.length, crc32: crc32(data) }));
}

async function waitFor(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('tsnap migrate', () => {
  it('moves a 256 MiB process that keeps writing: it verifies itself on the receiver and counts on; the source is gone', async () => {
    const work = tmpDir('tsnap-mig-');
    const out = join(work, 'restored.out');
    const srv = await startServer(join(work, 'in'), ['--restore', '--count', '1', '--stdout', out]);
    const p = await startProcess(await compileC('migrant'), ['256']);
    await p.waitForLine(/^count=20$/, 10_000);
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--json');
    expect(r.code, r.stderr).toBe(0);
    const done = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(done.restoredPid).toBe(p.pid);
    restored.push(done.restoredPid);
    expect(done.bytesSent).toBeGreaterThan(256 << 20);
    expect(done.downtimeMs).toBeGreaterThan(0);
    expect(r.stderr).toMatch(/"event":"iteration"/);
    // The final round's frozen steps were rehearsed once, early (dump/rehearsal.ts).
    expect(r.stderr).toMatch(/"event":"rehearsal","frozenMs":[\d.]+/);
    const exit = await p.exited; // the source was killed after the receiver committed
    expect(exit.signal).toBe('SIGKILL');
    const lastSource = Number(/count=(\d+)/.exec(p.lines().filter((l) => l.startsWith('count=')).pop()!)![1]);
    // The restored process is a new process with the old pid, writing to the receiver's file.
    await waitFor(() => existsSync(out) && /count=\d+/.test(readFileSync(out, 'utf8')));
    process.kill(done.restoredPid, 'SIGUSR1');
    await waitFor(() => /^(PASS|FAIL)/m.test(readFileSync(out, 'utf8')), 20_000);
    const verdict = /^(PASS count=(\d+)|FAIL.*)$/m.exec(readFileSync(out, 'utf8'))!;
    expect(verdict[0]).toMatch(/^PASS/);
    expect(Number(verdict[2])).toBeGreaterThan(lastSource);
    expect(findHolders(done.restoredPid)).toEqual([]);
    // One host: the source held its pid until it was killed, and the receiver said so rather than wait silently.
    expect(srv.events.find((e) => e.includes('"pid-held"'))).toMatch(new RegExp(`pid ${p.pid} is held by \\\\"migrant[-\\w]*\\\\" \\(running\\)`));
  });

  it('moves a multi-threaded process: every thread counts on on the receiver, TLS and tids checked by the threads themselves', async () => {
    const work = tmpDir('tsnap-mig-');
    const out = join(work, 'restored.out');
    const srv = await startServer(join(work, 'in'), ['--restore', '--count', '1', '--stdout', out]);
    const p = await startProcess(await compileC('threads'), ['4', '1000', 'print'], { readyPattern: /READY/ });
    await p.waitForLine(/^STATUS/, 5000);
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--json');
    expect(r.code, r.stderr).toBe(0);
    await p.exited;
    const lastSource = p.lines().filter((l) => l.startsWith('STATUS')).pop()!;
    await waitFor(() => existsSync(out) && readFileSync(out, 'utf8').split('\n').filter((l) => l.startsWith('STATUS')).length >= 3);
    const lines = readFileSync(out, 'utf8').trim().split('\n').filter((l) => l.startsWith('STATUS'));
    const counts = (l: string) => /counts=([\d,]+)/.exec(l)![1].split(',').map(Number);
    for (const l of lines) expect(l).toMatch(/^STATUS bad=0 /);
    counts(lines[0]).forEach((c, i) => expect(c).toBeGreaterThanOrEqual(counts(lastSource)[i]));
    counts(lines[lines.length - 1]).forEach((c, i) => expect(c).toBeGreaterThan(counts(lines[0])[i]));
    const pid = Number(/"pid":(\d+)/.exec(srv.events.find((e) => e.includes('"restored"'))!)![1]);
    restored.push(pid);
    expect(readdirSync(`/proc/${pid}/task`).length).toBe(6);
  });

  it('--tree: a parent and its children move together, pipes and shared memory intact, and check each other on the receiver', async () => {
    const work = tmpDir('tsnap-mig-');
    const out = join(work, 'restored.out');
    const srv = await startServer(join(work, 'in'), ['--restore', '--count', '1', '--stdout', out]);
    const p = await startProcess(await compileC('tree'), ['print']);
    const kids = [Number(p.readyInfo.child1), Number(p.readyInfo.child2)];
    await p.waitForLine(/^STATUS/, 5000);
    const r = await startTsnap(['migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--tree', '--json'], { TSNAP_TRACE: '1' }).done;
    expect(r.code, r.stderr).toBe(0);
    // The tree's held final round collects V8's heap before its freeze, as one process's does (gc-before-window.ts).
    expect(r.stderr).toMatch(/tsnap-trace \d+ [\d.]+ gc: collected before the freeze\n/);
    await p.exited;
    const lastSource = p.lines().filter((l) => l.startsWith('STATUS')).pop()!;
    const statuses = () => (existsSync(out) ? readFileSync(out, 'utf8').split('\n').filter((l) => l.startsWith('STATUS')) : []);
    await waitFor(() => statuses().length >= 3);
    const lines = statuses();
    const last = (l: string) => Number(/last=(\d+)/.exec(l)![1]);
    for (const l of lines) expect(l).toMatch(/ bad=0$/);
    expect(last(lines[0])).toBeGreaterThanOrEqual(last(lastSource));
    expect(last(lines[lines.length - 1])).toBeGreaterThan(last(lines[0]));
    restored.push(...kids, p.pid);
    for (const k of kids) expect(readFileSync(`/proc/${k}/stat`, 'utf8').split(' ')[3]).toBe(String(p.pid));
  });

  it('--tree whose final round the one-copy dump would split (forced, 4 MiB written per process): every image goes as one pages file (onePagesFile), and the tree checks itself on the receiver', async () => {
    const work = tmpDir('tsnap-mig-');
    const out = join(work, 'restored.out');
    const srv = await startServer(join(work, 'in'), ['--restore', '--count', '1', '--stdout', out]);
    // Parent and child each rewrite 4 MiB all the time (4 chunks a round: some in pages.1 if split) and check it whole.
    const p = await startPython(`
import os, sys, time
def work(who):
    buf = bytearray(4 << 20)
    n = 0
    while True:
        n += 1
        v = n % 251
        buf[:] = bytes([v]) * len(buf)
        time.sleep(0.01)
        ok = buf.count(v) == len(buf)
        if who == 'parent' and n % 20 == 0:
            print('STATUS n=%d ok=%d child=%d' % (n, ok, os.waitpid(kid, os.WNOHANG)[0] == 0), flush=True)
        if not ok:
            print('BAD %s' % who, flush=True)
kid = os.fork()
if kid == 0:
    work('child')
print('READY child=%d' % kid, flush=True)
work('parent')
`);
    const kid = Number(p.readyInfo.child);
    await p.waitForLine(/^STATUS/, 10_000);
    // What a frozen round of 64 MiB and more would do by default (format 2): the wire names five files per image.
    const r = await startTsnap(['migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--tree', '--max-iterations', '2', '--json'], { TSNAP_SPLICE: 'always', TSNAP_SPLICE_FILES: '2' }).done;
    expect(r.code, r.stderr).toBe(0);
    await p.exited;
    restored.push(kid, p.pid);
    const statuses = () => (existsSync(out) ? readFileSync(out, 'utf8').split('\n').filter((l) => /^(STATUS|BAD)/.test(l)) : []);
    await waitFor(() => statuses().length >= 2, 20_000);
    for (const l of statuses()) expect(l).toMatch(/^STATUS n=\d+ ok=1 child=1$/);
    const files = (readdirSync(join(work, 'in'), { recursive: true }) as string[]);
    expect(files.filter((f) => f.endsWith('pages.1'))).toEqual([]);
  });

  it('--tcp-established: a server migrates with its client connection, which carries on with the moved process', async () => {
    const work = tmpDir('tsnap-mig-');
    const srv = await startServer(join(work, 'in'), ['--restore', '--count', '1']);
    const p = await startProcess('python3', ['-u', '-c', `
import socket
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
print('READY port=%d' % l.getsockname()[1], flush=True)
c, _ = l.accept()
l.close()
n = 0
while True:
    line = b''
    while not line.endswith(b'\\n'):
        line += c.recv(1)
    n += 1
    c.sendall(b'echo:' + line.strip() + b' n=%d pid=%d\\n' % (n, __import__('os').getpid()))
`]);
    const client = connect(Number(p.readyInfo.port), '127.0.0.1');
    await new Promise((res) => client.once('connect', res));
    const got: string[] = [];
    let buf = '';
    client.on('data', (x) => { buf += x; const parts = buf.split('\n'); buf = parts.pop()!; got.push(...parts); });
    const next = async (n: number) => { for (let i = 0; i < 500 && got.length < n; i++) await new Promise((res) => setTimeout(res, 10)); return got[n - 1]; };
    client.write('a\n');
    expect(await next(1)).toBe(`echo:a n=1 pid=${p.pid}`);
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--tcp-established', '--json');
    expect(r.code, r.stderr).toBe(0);
    await p.exited;
    const done = JSON.parse(r.stdout.trim().split('\n').pop()!) as { restoredPid: number };
    restored.push(done.restoredPid);
    client.write('b\n');
    expect(await next(2)).toBe(`echo:b n=2 pid=${p.pid}`);
    // Locked while frozen and while it moved; nothing of the lock is left.
    expect(lockRulesOf(Number(p.readyInfo.port))).toEqual([]);
    client.destroy();
  });

  it('a write-heavy process that never converges stops at the iteration cap, and the downtime is reported', async () => {
    const work = tmpDir('tsnap-mig-');
    const out = join(work, 'restored.out');
    const srv = await startServer(join(work, 'in'), ['--restore', '--count', '1', '--stdout', out]);
    const p = await startProcess(await compileC('racer'), ['4096']);
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--max-iterations', '3', '--downtime-ms', '1', '--json');
    expect(r.code, r.stderr).toBe(0);
    const done = JSON.parse(r.stdout.trim().split('\n').pop()!);
    restored.push(done.restoredPid);
    expect(done.stoppedBecause).toMatch(/iteration cap \(3\)|not converging/);
    expect(done.downtimeMs).toBeGreaterThan(0);
    process.kill(done.restoredPid, 'SIGUSR1');
    await waitFor(() => /^(PASS|FAIL)/m.test(existsSync(out) ? readFileSync(out, 'utf8') : ''), 20_000);
    expect(readFileSync(out, 'utf8')).toMatch(/^PASS/m);
  });

  it('serve --restore warms its restore path up on a throwaway process before it listens, and leaves nothing of it but a spare lazy guard, which ends with serve', async () => {
    const work = tmpDir('tsnap-mig-');
    const srv = await startServer(join(work, 'in'), ['--restore']);
    const warmed = srv.events.findIndex((e) => e.includes('"warmed-up"'));
    expect(warmed, srv.events.join('\n')).toBeGreaterThanOrEqual(0);
    expect(warmed).toBeLessThan(srv.events.findIndex((e) => e.includes('"listening"')));
    // The sleep it dumped and the copies it restored (eagerly, then lazily)
    // are killed and reaped; its image is gone. What stays is the guard
    // started ahead for a post-copy's lazy restore (src/lazy/guard-spawn.ts).
    const comm = (pid: number) => { try { return readFileSync(`/proc/${pid}/comm`, 'utf8').trim(); } catch { return '?'; } };
    const left = await eventually(() => descendantsOf(srv.proc.pid!).map((pid) => ({ pid, comm: comm(pid) })), (d) => d.length === 1, 5000, "the warm-up's processes gone");
    expect(left.map((d) => d.comm)).toEqual(['tsnap-lazyguard']);
    // Its scratch image is named after serve's pid (other suites' serves warm up beside it).
    expect(readdirSync('/dev/shm').filter((n) => n.startsWith(`tsnap-warm-up-${srv.proc.pid}-`))).toEqual([]);
    // It holds nothing and ends at the end of its stdin, which serve holds.
    await killPid(srv.proc.pid!);
    const state = (pid: number) => { try { return /^State:\s+(\S)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]; } catch { return 'gone'; } };
    expect(await eventually(() => state(left[0].pid), (s) => s === 'gone' || s === 'Z', 5000, 'the spare guard ended')).toMatch(/gone|Z/);
    const cold = await startServer(join(work, 'in2'), ['--restore', '--no-warm-up']);
    expect(cold.events.some((e) => e.includes('"warmed-up"'))).toBe(false);
  });

  it('a wrong token is rejected before anything is stored; the source runs on untouched', async () => {
    const work = tmpDir('tsnap-mig-');
    const srv = await startServer(join(work, 'in'));
    const p = await startProcess(await compileC('counter'), []);
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'guess');
    expect(r.code).toBe(ExitCode.permission);
    expect(r.stderr).toMatch(/refused: wrong token/);
    expect(readdirSync(join(work, 'in'))).toEqual([]);
    expect(readStatus(p.pid).tracerPid).toBe(0);
    expect(findHolders(p.pid)).toEqual([]);
    const n = p.lines().length;
    await p.waitForLine(/^count=/, 5000, n);
  });

  it('a protocol version mismatch gets a clear error', async () => {
    const work = tmpDir('tsnap-mig-');
    const srv = await startServer(join(work, 'in'));
    const sock = connect({ host: '127.0.0.1', port: srv.port });
    await new Promise((r) => sock.once('connect', r));
    const reader = new FrameReader(sock);
    await send(sock, encodeDoc(Msg.Hello, { magic: WIRE_MAGIC, version: 99, token: 'sesame', pid: 1 }));
    const f = await reader.next();
    expect(f!.type).toBe(Msg.Error);
    expect(decodeDoc<{ message: string }>(f!).message).toMatch(/protocol version 99 is not supported \(this receiver speaks 2\)/);
    sock.destroy();
    expect(readdirSync(join(work, 'in'))).toEqual([]);
  });

  it('the receiver killed mid-stream: the source resumes and keeps running, nothing is left behind', async () => {
    const work = tmpDir('tsnap-mig-');
    const srv = await startServer(join(work, 'in'));
    const p = await startProcess(await compileC('migrant'), ['64']);
    const m = spawn(process.execPath, [TSNAP_BIN, 'migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--bandwidth-limit', '8M'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    m.stderr!.on('data', (d) => { err += d; });
    const code = new Promise<number | null>((resolve) => m.on('close', (c) => resolve(c)));
    await waitFor(() => srv.events.some((e) => e.includes('"accepted"')));
    await new Promise((r) => setTimeout(r, 300));
    srv.proc.kill('SIGKILL');
    expect(await code).not.toBe(0);
    expect(err).toMatch(/migration of process \d+ failed; it runs on where it was: migration peer closed the connection/);
    expect(readStatus(p.pid).tracerPid).toBe(0);
    expect(findHolders(p.pid)).toEqual([]);
    process.kill(p.pid, 'SIGUSR1');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000)).toMatch(/^PASS/);
  });
});

describe('migration between network namespaces, over TLS, and a restore that fails', () => {
  it('moves a process from one network namespace to another (veth), as root', async () => {
    const work = tmpDir('tsnap-mig-');
    // The whole pid: unique among the workers alive on this machine (pid % 10000 was not, across suites).
    const tag = `ts${process.pid}`;
    const ip = (...args: string[]) => execFileSync('ip', args, { stdio: 'pipe' });
    const cleanup = () => {
      for (const ns of [`${tag}a`, `${tag}b`]) { try { ip('netns', 'del', ns); } catch { /* absent */ } }
    };
    cleanup();
    try {
      ip('netns', 'add', `${tag}a`);
      ip('netns', 'add', `${tag}b`);
      ip('link', 'add', `${tag}va`, 'netns', `${tag}a`, 'type', 'veth', 'peer', 'name', `${tag}vb`, 'netns', `${tag}b`);
      ip('-n', `${tag}a`, 'addr', 'add', '10.231.0.1/30', 'dev', `${tag}va`);
      ip('-n', `${tag}b`, 'addr', 'add', '10.231.0.2/30', 'dev', `${tag}vb`);
      for (const [ns, dev] of [[`${tag}a`, `${tag}va`], [`${tag}b`, `${tag}vb`]]) {
        ip('-n', ns, 'link', 'set', dev, 'up');
        ip('-n', ns, 'link', 'set', 'lo', 'up');
      }
      const out = join(work, 'restored.out');
      // The receiver lives in namespace b; the sender runs in namespace a.
      const srv = spawn('ip', ['netns', 'exec', `${tag}b`, process.execPath, TSNAP_BIN, 'serve', '--listen', '10.231.0.2:7707', '--dir', join(work, 'in'), '--token', 'sesame', '--restore', '--count', '1', '--stdout', out, '--json'], { stdio: ['ignore', 'ignore', 'pipe'] });
      servers.push(srv);
      let events = '';
      srv.stderr!.on('data', (d) => { events += d; });
      await waitFor(() => events.includes('"listening"'));
      const p = await startProcess(await compileC('migrant'), ['32']);
      await p.waitForLine(/^count=20$/, 10_000);
      const r = spawn('ip', ['netns', 'exec', `${tag}a`, process.execPath, TSNAP_BIN, 'migrate', '--pid', String(p.pid), '--to', '10.231.0.2:7707', '--token', 'sesame', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      r.stdout!.on('data', (d) => { stdout += d; });
      r.stderr!.on('data', (d) => { stderr += d; });
      expect(await new Promise((res) => r.on('close', res)), stderr).toBe(0);
      const done = JSON.parse(stdout.trim().split('\n').pop()!);
      restored.push(done.restoredPid);
      expect(done.restoredPid).toBe(p.pid);
      process.kill(done.restoredPid, 'SIGUSR1');
      await waitFor(() => existsSync(out) && /^(PASS|FAIL)/m.test(readFileSync(out, 'utf8')), 20_000);
      expect(readFileSync(out, 'utf8')).toMatch(/^PASS/m);
    } finally {
      cleanup();
    }
  });

  it('TLS: the receiver with a certificate, the sender verifying it', async () => {
    const work = tmpDir('tsnap-mig-');
    const key = join(work, 'key.pem');
    const cert = join(work, 'cert.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'pipe' });
    const srv = await startServer(join(work, 'in'), ['--tls-cert', cert, '--tls-key', key, '--count', '1']);
    const p = await startProcess(await compileC('migrant'), ['8']);
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--tls-ca', cert, '--leave-running', '--json');
    expect(r.code, r.stderr).toBe(0);
    const done = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(readdirSync(done.receiverDir)).toContain('inventory');
    // --leave-running: the source goes on.
    const n = p.lines().length;
    await p.waitForLine(/^count=/, 5000, n);
    // Plain TCP to a TLS receiver gets nowhere.
    const plain = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame');
    expect(plain.code).not.toBe(0);
  });

  it('a restore that fails on the receiver keeps the image there and both sides say so', async () => {
    const work = tmpDir('tsnap-mig-');
    const srv = await startServer(join(work, 'in'), ['--restore', '--count', '1']);
    // A unix listener whose directory is replaced by a file once it is bound:
    // dumped fine, but its name cannot be bound again on the receiver.
    const sockDir = join(work, 'sockdir');
    mkdirSync(sockDir);
    const p = await startProcess('python3', ['-c', `import socket, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(${JSON.stringify(join(sockDir, 's'))})\ns.listen()\nprint("READY", flush=True)\ntime.sleep(60)\n`]);
    rmSync(sockDir, { recursive: true });
    writeFileSync(sockDir, 'not a directory');
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--json');
    expect(r.code, r.stderr).toBe(ExitCode.restoreFailed);
    expect(r.stderr).toMatch(/restore failed: .*cannot bind .*ENOTDIR.*; the image stays in \S+ for tsnap restore/);
    const done = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(readdirSync(done.receiverDir)).toContain('inventory');
    await waitFor(() => srv.events.some((e) => e.includes('"restore-failed"')));
  });
});

describe('tsnap serve is confined and cannot be jammed', () => {
  it('a HELLO whose pid is a path, not a pid, is refused and nothing is written in or outside --dir', async () => {
    const work = tmpDir('tsnap-mig-');
    const srv = await startServer(join(work, 'in'));
    for (const pid of ['../escape', '/tmp/escape', 0, -1, 1.5, 2 ** 40, 2n ** 63n, '7', null, { toString: '../x' }]) {
      const c = await rawPeer(srv.port);
      await send(c.sock, hello({ pid }));
      const e = errorOf(await c.reader.next());
      expect(e.code, typeof pid).toBe('protocol');
      expect(e.message).toMatch(/HELLO pid must be a positive integer/);
      await c.closed;
    }
    expect(readdirSync(join(work, 'in'))).toEqual([]);
    expect(readdirSync(work)).toEqual(['in']);
    expect(readdirSync('/tmp').filter((n) => n.startsWith('escape-'))).toEqual([]);
    expect(srv.proc.exitCode).toBeNull();
  });

  it('COMMIT without a complete final image is refused and what arrived is removed; a parent path leading out of --dir is refused', async () => {
    const work = tmpDir('tsnap-mig-');
    const srv = await startServer(join(work, 'in'));
    const open = async () => {
      const c = await rawPeer(srv.port);
      await send(c.sock, hello());
      expect((await c.reader.next())?.type).toBe(Msg.HelloOk);
      return c;
    };
    // Nothing sent at all.
    let c = await open();
    await send(c.sock, encodeDoc(Msg.Commit, {}));
    expect(errorOf(await c.reader.next()).message).toMatch(/COMMIT refused: the image is not complete: no image was sent/);
    await c.closed;
    // A pre-copy round but no final one.
    c = await open();
    await send(c.sock, encodeDoc(Msg.IterBegin, { name: '1' }));
    await sendFile(c.sock, 'inventory', Buffer.from('not an inventory'));
    await send(c.sock, encodeDoc(Msg.IterEnd, {}));
    await send(c.sock, encodeDoc(Msg.Commit, {}));
    expect(errorOf(await c.reader.next()).message).toMatch(/the last iteration is 1, not the final one/);
    await c.closed;
    // A "final" image that is no image.
    c = await open();
    await send(c.sock, encodeDoc(Msg.IterBegin, { name: 'final' }));
    await sendFile(c.sock, 'inventory', Buffer.from('not an inventory'));
    await send(c.sock, encodeDoc(Msg.IterEnd, {}));
    await send(c.sock, encodeDoc(Msg.Commit, {}));
    expect(errorOf(await c.reader.next()).message).toMatch(/COMMIT refused: the image is not complete: .*inventory/);
    await c.closed;

    // A real delta whose inventory names a parent outside the migration's directory.
    const p = await startProcess(await compileC('counter'), []);
    const img = join(work, 'img');
    expect((await tsnap('pre-dump', '--pid', String(p.pid), '--dir', join(img, '1'))).code).toBe(0);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(img, '2'), '--parent', join(img, '1'), '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    const inv = readMetaFile<Inventory>(join(img, '2'), FileKind.Inventory);
    const forged = join(work, 'forged');
    mkdirSync(forged);
    writeMetaFile(forged, FileKind.Inventory, { ...inv, parent: { ...inv.parent!, path: join(img, '1') } });
    c = await open();
    await send(c.sock, encodeDoc(Msg.IterBegin, { name: 'final' }));
    for (const f of ['pages', 'pagemap', 'process', 'stats']) {
      if (existsSync(join(img, '2', f))) await sendFile(c.sock, f, readFileSync(join(img, '2', f)));
    }
    await sendFile(c.sock, 'inventory', readFileSync(join(forged, 'inventory')));
    await send(c.sock, encodeDoc(Msg.IterEnd, {}));
    await send(c.sock, encodeDoc(Msg.Commit, {}));
    expect(errorOf(await c.reader.next()).message).toMatch(/COMMIT refused: .*would lead out of/);
    await c.closed;
    await waitFor(() => readdirSync(join(work, 'in')).length === 0);
    expect(srv.events.filter((e) => e.includes('"committed"'))).toEqual([]);
    // The process that was dumped runs on, untraced.
    expect(readStatus(p.pid).tracerPid).toBe(0);
  });

  it('an idle, a garbage and a resetting client, and a queued one that resets, hold up no real migration and do not end serve', async () => {
    const work = tmpDir('tsnap-mig-');
    const out = join(work, 'restored.out');
    // A long deadline: the migration must get through while the idle client still holds its connection.
    const srv = await startServer(join(work, 'in'), ['--restore', '--stdout', out, '--handshake-timeout', '600']);
    const idle = await rawPeer(srv.port);
    let idleClosed = false;
    void idle.closed.then(() => { idleClosed = true; });
    const garbage = await rawPeer(srv.port);
    garbage.sock.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(errorOf(await garbage.reader.next()).code).toBe('protocol');
    await garbage.closed;
    const half = await rawPeer(srv.port);
    half.sock.write(Buffer.concat(hello()).subarray(0, 12));
    half.sock.resetAndDestroy();
    await half.closed;

    const p = await startProcess(await compileC('migrant'), ['16']);
    await p.waitForLine(/^count=20$/, 10_000);
    const m = spawn(process.execPath, [TSNAP_BIN, 'migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--bandwidth-limit', '16M', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    m.stdout!.on('data', (x) => { stdout += x; });
    m.stderr!.on('data', (x) => { stderr += x; });
    const code = new Promise<number | null>((res) => m.on('close', (c) => res(c)));
    await waitFor(() => srv.events.some((e) => e.includes('"accepted"')));
    // An authenticated client waiting for its turn, then reset by its side; and one more mid-handshake.
    const queued = await rawPeer(srv.port);
    await send(queued.sock, hello({ pid: 4243 }));
    const half2 = await rawPeer(srv.port);
    half2.sock.write(Buffer.concat(hello()).subarray(0, 5));
    await new Promise((r) => setTimeout(r, 100));
    queued.sock.resetAndDestroy();
    half2.sock.resetAndDestroy();
    expect(await code, stderr).toBe(0);
    const done = JSON.parse(stdout.trim().split('\n').pop()!) as { restoredPid: number };
    restored.push(done.restoredPid);
    expect(done.restoredPid).toBe(p.pid);
    expect(idleClosed).toBe(false);
    expect(srv.proc.exitCode).toBeNull();
    // The restored process checks its own memory on the receiver.
    process.kill(done.restoredPid, 'SIGUSR1');
    await waitFor(() => existsSync(out) && /^(PASS|FAIL)/m.test(readFileSync(out, 'utf8')), 20_000);
    expect(readFileSync(out, 'utf8')).toMatch(/^PASS/m);
    // serve is still there for the next one.
    const again = await rawPeer(srv.port);
    await send(again.sock, hello({ token: 'guess' }));
    expect(errorOf(await again.reader.next()).code).toBe('token');
    idle.sock.destroy();
    expect(srv.events.join('\n')).not.toMatch(/Unhandled|ECONNRESET.*at /);
  });

  it('a flood of idle connections beyond the handshake cap drops the oldest, not a real sender', async () => {
    const work = tmpDir('tsnap-mig-');
    const out = join(work, 'restored.out');
    const srv = await startServer(join(work, 'in'), ['--restore', '--count', '1', '--stdout', out, '--handshake-timeout', '600']);
    const flood = await Promise.all(Array.from({ length: 80 }, () => rawPeer(srv.port)));
    const p = await startProcess(await compileC('migrant'), ['8']);
    await p.waitForLine(/^count=20$/, 10_000);
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--json');
    expect(r.code, r.stderr).toBe(0);
    const done = JSON.parse(r.stdout.trim().split('\n').pop()!) as { restoredPid: number };
    restored.push(done.restoredPid);
    process.kill(done.restoredPid, 'SIGUSR1');
    await waitFor(() => existsSync(out) && /^(PASS|FAIL)/m.test(readFileSync(out, 'utf8')), 20_000);
    expect(readFileSync(out, 'utf8')).toMatch(/^PASS/m);
    expect(srv.events.filter((e) => e.includes('"busy"')).length).toBeGreaterThanOrEqual(16);
    for (const c of flood) c.sock.destroy();
  });

  it('a receiver whose disk fills up tells the sender why; the source runs on and nothing is left on the receiver', async () => {
    const work = tmpDir('tsnap-mig-');
    const full = join(work, 'full');
    mkdirSync(full);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', full]);
    try {
      const srv = await startServer(join(full, 'in'));
      const p = await startProcess(await compileC('migrant'), ['8']);
      await p.waitForLine(/^count=20$/, 10_000);
      const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame');
      expect(r.code, r.stderr).toBe(ExitCode.targetFailed);
      expect(r.stderr.split('\n').filter((l) => l.startsWith('tsnap: migration'))).toEqual([
        expect.stringMatching(new RegExp(`^tsnap: migration of process ${p.pid} failed; it runs on where it was: migration peer refused: the receiver: no space left on the device writing ${join(full, 'in')}/${p.pid}-\\d+/\\d+/(pages|pagemap|stats|inventory); free space or choose another --dir$`)),
      ]);
      await waitFor(() => readdirSync(join(full, 'in')).length === 0);
      expect(srv.proc.exitCode).toBeNull();
      expect(readStatus(p.pid).tracerPid).toBe(0);
      expect(findHolders(p.pid)).toEqual([]);
      process.kill(p.pid, 'SIGUSR1');
      expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000)).toMatch(/^PASS/);
    } finally {
      for (const s of servers.splice(0)) s.kill('SIGKILL');
      await new Promise((res) => setTimeout(res, 100));
      execFileSync('umount', ['-l', full]);
    }
  });

  it('a connection that sends no HELLO within --handshake-timeout is told so and closed', async () => {
    const work = tmpDir('tsnap-mig-');
    const srv = await startServer(join(work, 'in'), ['--handshake-timeout', '0.3']);
    const idle = await rawPeer(srv.port);
    const e = errorOf(await idle.reader.next());
    expect(e.code).toBe('timeout');
    expect(e.message).toMatch(/no HELLO within 0.3 s/);
    await idle.closed;
    await waitFor(() => srv.events.some((x) => x.includes('"timeout"')));
    expect(srv.proc.exitCode).toBeNull();
  });
});

describe('a peer that goes away', () => {
  it('reads the same whether a write (EPIPE), a read (ECONNRESET) or a drain noticed it', async () => {
    // A peer that resets every connection as soon as it has one.
    const server = createServer((s) => { s.on('error', () => {}); setTimeout(() => s.resetAndDestroy(), 20); });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as { port: number }).port;
    try {
      const messages = new Set<string>();
      // The writer: big frames until a write or its drain fails.
      const w = await rawPeer(port);
      const big = Buffer.alloc(1 << 20);
      let failure: unknown = null;
      for (let i = 0; i < 10_000 && !failure; i++) await send(w.sock, encodeFrame(Msg.FileData, big)).catch((e) => { failure = e; });
      messages.add((failure as Error).message);
      // The reader: waits for a frame that never comes.
      const r = await rawPeer(port);
      messages.add(await r.reader.next().then(() => 'no error', (e: Error) => e.message));
      expect([...messages]).toEqual(['migration peer closed the connection']);
    } finally {
      server.close();
    }
  });
});

/** `tsnap serve` in its own pid namespace, as on another host: the migrated pid is free there at once. */
function startServerInPidNs(dir: string, extra: string[] = []): Promise<{ port: number; proc: ChildProcess; events: string[] }> {
  // --kill-child: serve is the namespace's init, and everything in it dies with it.
  return launchServe(['unshare', '--pid', '--fork', '--mount-proc', '--kill-child'], dir, extra);
}

/** The scheduling policy (field 41 of stat) of every task of `pid`. */
function schedPolicies(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).map((t) => {
    const st = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
    return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[38]);
  });
}

const eventsOf = (events: string[], name: string) => events.filter((e) => e.startsWith('{') && e.includes(`"event":"${name}"`)).map((e) => JSON.parse(e) as Record<string, unknown>);

describe('wire v2: the receiver builds the process while the rounds arrive', () => {
  it('a multi-threaded process built while it arrives: its threads count on there, and none of its tasks keeps the window\'s real-time class', async () => {
    const work = tmpDir('tsnap-mig-');
    const out = join(work, 'restored.out');
    const srv = await startServerInPidNs(join(work, 'in'), ['--restore', '--count', '1', '--stdout', out]);
    const p = await startProcess(await compileC('threads'), ['4', '1000', 'print'], { readyPattern: /READY/ });
    await p.waitForLine(/^STATUS/, 5000);
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--json');
    expect(r.code, r.stderr).toBe(0);
    await p.exited;
    const lastSource = p.lines().filter((l) => l.startsWith('STATUS')).pop()!;
    await waitFor(() => eventsOf(srv.events, 'restored').length > 0);
    expect(eventsOf(srv.events, 'restored')[0]).toMatchObject({ pid: p.pid, path: 'live' });
    const [moved] = inOtherPidNs(p.pid);
    expect(moved).toBeGreaterThan(0);
    restored.push(moved);
    // Its threads were made in the window's class (restore.ts, threadsInherit) and given the process's own back before the start.
    expect(schedPolicies(moved)).toEqual([0, 0, 0, 0, 0, 0]);
    await waitFor(() => existsSync(out) && readFileSync(out, 'utf8').split('\n').filter((l) => l.startsWith('STATUS')).length >= 3);
    const lines = readFileSync(out, 'utf8').trim().split('\n').filter((l) => l.startsWith('STATUS'));
    const counts = (l: string) => /counts=([\d,]+)/.exec(l)![1].split(',').map(Number);
    for (const l of lines) expect(l).toMatch(/^STATUS bad=0 /);
    counts(lines[0]).forEach((c, i) => expect(c).toBeGreaterThanOrEqual(counts(lastSource)[i]));
    counts(lines[lines.length - 1]).forEach((c, i) => expect(c).toBeGreaterThan(counts(lines[0])[i]));
  });

  it('pages go into a stopped process on the receiver round by round; after the freeze only the last delta and the state remain; it verifies itself there', async () => {
    const work = tmpDir('tsnap-mig-');
    const out = join(work, 'restored.out');
    const srv = await startServerInPidNs(join(work, 'in'), ['--restore', '--stdout', out]);
    const p = await startProcess(await compileC('migrant'), ['32']);
    await p.waitForLine(/^count=20$/, 10_000);
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--json');
    expect(r.code, r.stderr).toBe(0);
    const done = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(done.restoredPid).toBe(p.pid);
    expect((await p.exited).signal).toBe('SIGKILL');
    const lastSource = Number(/count=(\d+)/.exec(p.lines().filter((l) => l.startsWith('count=')).pop()!)![1]);
    // Built under the source's pid from round 1 on; every round before the
    // freeze wrote its pages into it, the first one all 32 MiB of them.
    await waitFor(() => eventsOf(srv.events, 'restored').length > 0);
    expect(eventsOf(srv.events, 'building')).toEqual([{ event: 'building', pid: p.pid }]);
    const rounds = eventsOf(srv.events, 'iteration');
    expect(rounds.length).toBeGreaterThanOrEqual(2);
    expect(rounds[0]).toMatchObject({ name: '1', livePid: p.pid });
    expect(rounds[0].livePagesWritten as number).toBeGreaterThanOrEqual(32 * 256);
    expect(rounds.map((e) => e.name).pop()).toBe('final');
    expect(eventsOf(srv.events, 'restored')[0]).toMatchObject({ pid: p.pid, path: 'live' });
    expect(eventsOf(srv.events, 'live-abandoned')).toEqual([]);
    // The process's own word: its memory checks out, and it counts on from where the source stopped.
    const [moved] = inOtherPidNs(p.pid);
    expect(moved).toBeGreaterThan(0);
    restored.push(moved);
    // The real-time class of the downtime (window-priority.ts) was the receiver's, and is no one's now.
    expect(schedPolicies(moved)).toEqual([0]);
    const serveMain = Number(readFileSync(`/proc/${srv.proc.pid}/task/${srv.proc.pid}/children`, 'utf8').trim().split(' ')[0]);
    expect(schedPolicies(serveMain).every((x) => x === 0)).toBe(true);
    await waitFor(() => existsSync(out) && /count=\d+/.test(readFileSync(out, 'utf8')));
    process.kill(moved, 'SIGUSR1');
    await waitFor(() => /^(PASS|FAIL)/m.test(readFileSync(out, 'utf8')), 20_000);
    const verdict = /^(PASS count=(\d+)|FAIL.*)$/m.exec(readFileSync(out, 'utf8'))!;
    expect(verdict[0]).toMatch(/^PASS/);
    expect(Number(verdict[2])).toBeGreaterThan(lastSource);
    // The chain was written too, after the resume: a normal image chain that verify accepts (the fallback's source).
    await waitFor(() => eventsOf(srv.events, 'chain-durable').length > 0);
    const dir = readdirSync(join(work, 'in'))[0];
    expect(readdirSync(join(work, 'in', dir, '1'))).toEqual(expect.arrayContaining(['pages', 'pagemap', 'inventory']));
    const v = await tsnap('verify', join(work, 'in', dir, 'final'));
    expect(v.code, v.stderr).toBe(0);
  });

  // The final round's present pages and guards are read before the freeze, under the VmFlags
  // watch (dump/early-scan.ts); pages dropped before that read, and pages dropped after it
  // (the watch counts the madvise: the walk is done frozen), are both absent on the receiver.
  for (const when of ['before', 'after'] as const) {
    it(`pages the process drops ${when} the final round's early page walk are absent on the receiver; the rest holds`, async () => {
      const work = tmpDir('tsnap-mig-');
      const out = join(work, 'restored.out');
      const go = join(work, 'go');
      const srv = await startServerInPidNs(join(work, 'in'), ['--restore', '--stdout', out]);
      const p = await startProcess(await compileC('dropper'), ['48']);
      await p.waitForLine(/^READY/, 10_000);
      const t = startTsnap(['migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--max-iterations', '2', '--json'], { TSNAP_TEST_HOLD_AT: `${when === 'before' ? 'before-watch' : 'flags-read'}:${go}`, TSNAP_TRACE: '1' });
      let stderr = '';
      t.child.stderr!.on('data', (d) => { stderr += d; });
      let finished = false;
      void t.done.then(() => { finished = true; });
      await waitFor(() => /holding at/.test(stderr) || finished, 120_000);
      const held = /holding at/.test(stderr);
      if (held) {
        const mark = p.lines().length;
        process.kill(p.pid, 'SIGUSR2');
        await p.waitForLine(/^DROPPED/, 10_000, mark);
        writeFileSync(go, '');
      }
      const r = await t.done;
      expect(r.code, r.stderr).toBe(0);
      if (!/present pages read before the freeze/.test(r.stderr)) {
        // No perf events or tracefs here: no watch, every walk frozen.
        console.log('no VmFlags watch here: the early page walk is not used');
        return;
      }
      if (when === 'before') expect(r.stderr).toMatch(/present pages and guards from before the freeze/);
      else expect(r.stderr).toMatch(/present pages walked frozen \(\d+ madvise calls that drop pages\)/);
      const [moved] = inOtherPidNs(p.pid);
      expect(moved).toBeGreaterThan(0);
      restored.push(moved);
      await waitFor(() => eventsOf(srv.events, 'restored').length > 0);
      process.kill(moved, 'SIGUSR1');
      await waitFor(() => existsSync(out) && /^(PASS|FAIL)/m.test(readFileSync(out, 'utf8')), 20_000);
      expect(/^(PASS|FAIL).*$/m.exec(readFileSync(out, 'utf8'))![0]).toBe('PASS dropped=1');
    });
  }

  it('the sender killed mid-stream: the half-built process on the receiver is killed, the source runs on, serve keeps serving', async () => {
    const work = tmpDir('tsnap-mig-');
    const srv = await startServerInPidNs(join(work, 'in'), ['--restore']);
    const p = await startProcess(await compileC('migrant'), ['16']);
    await p.waitForLine(/^count=20$/, 10_000);
    const m = spawn(process.execPath, [TSNAP_BIN, 'migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--bandwidth-limit', '2M'], { stdio: ['ignore', 'ignore', 'ignore'] });
    const gone = new Promise<void>((res) => m.once('exit', () => res()));
    await waitFor(() => eventsOf(srv.events, 'building').length > 0);
    await waitFor(() => inOtherPidNs(p.pid).length > 0);
    m.kill('SIGKILL');
    await gone;
    await waitFor(() => eventsOf(srv.events, 'failed').length > 0);
    expect(inOtherPidNs(p.pid)).toEqual([]);
    await waitFor(() => readdirSync(join(work, 'in')).length === 0);
    expect(srv.proc.exitCode).toBeNull();
    // The source never stopped for long, and its tracking ended with its holder.
    await waitFor(() => findHolders(p.pid).length === 0);
    expect(readStatus(p.pid).tracerPid).toBe(0);
    process.kill(p.pid, 'SIGUSR1');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000)).toMatch(/^PASS/);
  });

  it('serve --new-pid builds the process while it arrives on the same host, under a fresh pid', async () => {
    const work = tmpDir('tsnap-mig-');
    const out = join(work, 'restored.out');
    const srv = await startServer(join(work, 'in'), ['--restore', '--new-pid', '--count', '1', '--stdout', out]);
    const p = await startProcess(await compileC('migrant'), ['16']);
    await p.waitForLine(/^count=20$/, 10_000);
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--json');
    expect(r.code, r.stderr).toBe(0);
    const done = JSON.parse(r.stdout.trim().split('\n').pop()!);
    restored.push(done.restoredPid);
    expect(done.restoredPid).not.toBe(p.pid);
    await p.exited;
    await waitFor(() => eventsOf(srv.events, 'restored').length > 0);
    expect(eventsOf(srv.events, 'restored')[0]).toMatchObject({ pid: done.restoredPid, path: 'live' });
    expect(eventsOf(srv.events, 'building')).toEqual([{ event: 'building', pid: done.restoredPid }]);
    await waitFor(() => existsSync(out) && /count=\d+/.test(readFileSync(out, 'utf8')));
    process.kill(done.restoredPid, 'SIGUSR1');
    await waitFor(() => /^(PASS|FAIL)/m.test(readFileSync(out, 'utf8')), 20_000);
    expect(/^(PASS|FAIL).*$/m.exec(readFileSync(out, 'utf8'))![0]).toMatch(/^PASS/);
  });

  it('a layout the receiver cannot build while it arrives (a mapped memfd) goes to disk and is restored from the chain, saying why', async () => {
    const work = tmpDir('tsnap-mig-');
    const out = join(work, 'restored.out');
    const srv = await startServerInPidNs(join(work, 'in'), ['--restore', '--stdout', out]);
    const p = await startPython(`
import mmap, os, sys, time
fd = os.memfd_create('table')
os.ftruncate(fd, 1 << 20)
m = mmap.mmap(fd, 1 << 20)
for i in range(0, 1 << 20, 4096): m[i:i + 8] = (i * 7).to_bytes(8, 'little')
print('READY', flush=True)
n = 0
while True:
    n += 1
    ok = all(int.from_bytes(m[i:i + 8], 'little') == i * 7 for i in range(0, 1 << 20, 4096))
    print('tick n=%d ok=%d' % (n, ok), flush=True)
    time.sleep(0.05)
`);
    await p.waitForLine(/^tick n=3 /, 10_000);
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--json');
    expect(r.code, r.stderr).toBe(0);
    await p.exited;
    await waitFor(() => eventsOf(srv.events, 'restored').length > 0);
    expect(eventsOf(srv.events, 'building')).toEqual([]);
    expect(eventsOf(srv.events, 'live-abandoned')[0].reason).toMatch(/^the process cannot be built while it arrives: it maps the memfd \/memfd:table/);
    expect(eventsOf(srv.events, 'restored')[0]).toMatchObject({ path: 'disk', fallback: expect.stringMatching(/memfd/) });
    const last = Number(/n=(\d+)/.exec(p.lines().filter((l) => l.startsWith('tick')).pop()!)![1]);
    await waitFor(() => existsSync(out) && readFileSync(out, 'utf8').split('\n').filter((l) => l.startsWith('tick')).length >= 2);
    const ticks = readFileSync(out, 'utf8').trim().split('\n').filter((l) => l.startsWith('tick'));
    for (const t of ticks) expect(t).toMatch(/ ok=1$/);
    expect(Number(/n=(\d+)/.exec(ticks[ticks.length - 1])![1])).toBeGreaterThan(last);
    restored.push(...inOtherPidNs(p.pid));
  });

  it('a garbled PAGE_CHUNK gets a clear error; serve keeps serving', async () => {
    const work = tmpDir('tsnap-mig-');
    const srv = await startServer(join(work, 'in'));
    const { sock, reader } = await rawPeer(srv.port);
    await send(sock, hello());
    expect((await reader.next())?.type).toBe(Msg.HelloOk);
    await send(sock, encodeDoc(Msg.IterBegin, { name: '1' }));
    await send(sock, encodeDoc(Msg.Layout, { vmas: [], zero: [], incremental: false }));
    const junk = Buffer.alloc(64, 0xff);
    await send(sock, encodeFrame(Msg.PageChunk, junk));
    const err = errorOf(await reader.next());
    expect(err.message).toMatch(/^migration stream: bad PAGE_CHUNK message: .*; the peer is not a compatible tsnap, or the stream is corrupted$/);
    sock.destroy();
    await waitFor(() => readdirSync(join(work, 'in')).length === 0);
    expect(srv.proc.exitCode).toBeNull();
  });
});

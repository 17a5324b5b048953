/**
 * Live migration over loopback between two real tsnap processes: the
 * migrated process checks its own memory on the receiver and goes on
 * counting; the source is gone. Failures leave the source running.
 */
import { describe, it, expect, afterAll, afterEach } from 'vitest';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, TSNAP_BIN, killPid } from './helpers/tsnap.js';
import { readStatus } from '../src/proc/index.js';
import { findHolders } from '../src/track/untrack.js';
import { FrameReader, Msg, encodeDoc, decodeDoc, send, WIRE_MAGIC } from '../src/migrate/wire.js';
import { ExitCode } from '../src/errors.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const servers: ChildProcess[] = [];
const restored: number[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await killPid(s.pid!);
  for (const pid of restored.splice(0)) await killPid(pid);
});

let nextPort = 17700 + (process.pid % 200);

async function startServer(dir: string, extra: string[] = []): Promise<{ port: number; proc: ChildProcess; events: string[] }> {
  const port = nextPort++;
  const proc = spawn(process.execPath, [TSNAP_BIN, 'serve', '--listen', `127.0.0.1:${port}`, '--dir', dir, '--token', 'sesame', '--json', ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
  servers.push(proc);
  const events: string[] = [];
  await new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (d) => {
      events.push(...String(d).trim().split('\n'));
      if (events.some((e) => e.includes('"listening"'))) resolve();
    });
    proc.once('exit', () => reject(new Error(`serve exited: ${events.join('\n')}`)));
  });
  return { port, proc, events };
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
    const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--tree', '--json');
    expect(r.code, r.stderr).toBe(0);
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
    expect(decodeDoc<{ message: string }>(f!).message).toMatch(/protocol version 99 is not supported \(this receiver speaks 1\)/);
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
    const tag = `ts${process.pid % 10000}`;
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

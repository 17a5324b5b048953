/**
 * Live migration over loopback between two real tsnap processes: the
 * migrated process checks its own memory on the receiver and goes on
 * counting; the source is gone. Failures leave the source running.
 */
import { describe, it, expect, afterAll, afterEach } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
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
  for (const s of servers.splice(0)) s.kill('SIGKILL');
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

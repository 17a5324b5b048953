/**
 * migrate --postcopy: the process resumes on the receiver (its own pid
 * namespace, so that the pid is free as on another host) right after its
 * state; the pages of the last round follow from the frozen source, which
 * is killed only once the receiver has them all. The process's own check
 * says whether its memory is whole.
 */
import { describe, it, expect, afterAll, afterEach } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { TSNAP_BIN, killPid } from './helpers/tsnap.js';
import { findHolders } from '../src/track/untrack.js';
import { readStatus } from '../src/proc/index.js';
import { inOtherPidNs } from './helpers/other-host.js';
import { startServe } from './helpers/serve.js';
import { killTree, descendantsOf } from './helpers/processes.js';
import { LineLog } from './helpers/lines.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const servers: ChildProcess[] = [];
const moved: number[] = [];
const proxies: Server[] = [];
afterEach(async () => {
  for (const s of proxies.splice(0)) s.close();
  // With what they run: serve in a pid namespace is unshare's child, and must be gone, not dying, when the test ends.
  for (const s of servers.splice(0)) await killTree(s.pid!);
  for (const pid of moved.splice(0)) await killPid(pid);
});

/** serve in a pid namespace of its own (the migrated pid is free there, as on another host), on a port the kernel picks. */
async function serveInPidNs(dir: string, extra: string[], env: Record<string, string> = {}): Promise<{ port: number; events: string[]; proc: ChildProcess }> {
  // --kill-child: serve is the namespace's init, and everything in it dies with it.
  const s = await startServe(dir, extra, ['unshare', '--pid', '--fork', '--mount-proc', '--kill-child'], env);
  servers.push(s.proc);
  return s;
}

/** tsnap migrate as a child, its JSON events as they come. */
function migrateChild(args: string[], env: Record<string, string> = {}): { events: string[]; stdout: () => string; exited: Promise<number | null>; child: ChildProcess } {
  const m = spawn(process.execPath, [TSNAP_BIN, 'migrate', '--token', 'sesame', '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  servers.push(m);
  // Whole lines only: an event split between two reads must not be parsed in halves.
  const events = new LineLog('tsnap migrate').follow(m.stderr).lines;
  let out = '';
  m.stdout!.on('data', (d) => { out += String(d); });
  return { events, stdout: () => out, exited: new Promise((r) => m.once('exit', (code) => r(code))), child: m };
}

const eventsOf = (events: string[], name: string) => events.filter((e) => e.startsWith('{') && e.includes(`"event":"${name}"`)).map((e) => JSON.parse(e) as Record<string, unknown>);

async function waitFor(cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The scheduling policy (field 41 of stat) of every task of `pid` (none when it is gone). */
function schedPolicies(pid: number): number[] {
  let tasks: string[];
  try { tasks = readdirSync(`/proc/${pid}/task`); } catch { return []; }
  return tasks.flatMap((t) => {
    try {
      const st = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
      return [Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[38])];
    } catch { return []; }
  });
}

/** The moved process's own verdict on its memory. */
async function selfCheck(pid: number, out: string): Promise<string> {
  const [there] = inOtherPidNs(pid);
  expect(there).toBeGreaterThan(0);
  moved.push(there);
  await waitFor(() => existsSync(out) && /count=\d+/.test(readFileSync(out, 'utf8')));
  process.kill(there, 'SIGUSR1');
  await waitFor(() => /^(PASS|FAIL)/m.test(readFileSync(out, 'utf8')));
  return /^(PASS|FAIL).*$/m.exec(readFileSync(out, 'utf8'))![0];
}

/** A TCP relay the test can cut. */
async function relay(to: number): Promise<{ port: number; cut: () => void }> {
  const socks: Socket[] = [];
  const srv = createServer((a) => {
    const b = connect({ host: '127.0.0.1', port: to });
    socks.push(a, b);
    a.on('error', () => {});
    b.on('error', () => {});
    a.pipe(b);
    b.pipe(a);
  });
  proxies.push(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const { port } = srv.address() as AddressInfo;
  return { port, cut: () => { for (const s of socks) s.resetAndDestroy(); srv.close(); } };
}

describe('migrate --postcopy', () => {
  it('64 MiB: resumes on the receiver before the last round\'s pages arrive; the source stays frozen until POSTCOPY_DONE; the process checks out', async () => {
    const work = tmpDir('tsnap-pc-');
    const out = join(work, 'moved.out');
    // The receiver's background fill paced (faults are still served at
    // once), so that every page takes a while to be in: the source must
    // still be there, frozen, once the process runs on the receiver.
    const srv = await serveInPidNs(join(work, 'in'), ['--restore', '--stdout', out], { TSNAP_LAZY_FILL_DELAY_MS: '30', TSNAP_TRACE: '1' });
    const p = await startProcess(await compileC('pcwriter'), ['64', '32']);
    await p.waitForLine(/^count=20$/, 10_000);
    const m = migrateChild(['--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--postcopy', '--max-iterations', '1'], { TSNAP_POSTCOPY_PUSH_DELAY_MS: '20' });
    await waitFor(() => eventsOf(srv.events, 'restored').length > 0 || eventsOf(srv.events, 'failed').length > 0);
    expect(eventsOf(srv.events, 'restored')[0], srv.events.join('\n')).toMatchObject({ pid: p.pid, path: 'live' });
    const sourceAlive = existsSync(`/proc/${p.pid}`) && eventsOf(m.events, 'postcopy-done').length === 0;
    expect(await m.exited, m.events.join('\n')).toBe(0);
    expect(sourceAlive).toBe(true);
    expect((await p.exited).signal).toBe('SIGKILL');
    const done = JSON.parse(m.stdout().trim().split('\n').pop()!);
    expect(done.restoredPid).toBe(p.pid);
    expect(done.postcopy).toMatchObject({ because: 'requested' });
    expect(done.postcopy.pages).toBeGreaterThan(0);
    expect(done.postcopy.pagesPushed + done.postcopy.pagesRequested).toBe(done.postcopy.pages);
    // A fault that waited on the link had serve's thread in the real-time class for its wait (lazy-restore.ts).
    expect(done.postcopy.pagesRequested).toBeGreaterThan(0);
    expect(srv.events.some((e) => /lazy: a fault waits on the source, tsnap's thread raised/.test(e)), srv.events.filter((e) => e.includes('lazy:')).join('\n')).toBe(true);
    expect(done.postcopy.allInMs).toBeGreaterThanOrEqual(done.downtimeMs);
    const names = m.events.filter((e) => e.startsWith('{')).map((e) => JSON.parse(e).event as string);
    expect(names.indexOf('resumed')).toBeLessThan(names.indexOf('postcopy-done'));
    await waitFor(() => eventsOf(srv.events, 'postcopy-done').length > 0);
    // The window ran in the real-time class (window-priority.ts) up to RESTORED; nothing of it stays there:
    // not the moved process, not serve, not the guard and what else serve started.
    const serveMain = Number(readFileSync(`/proc/${srv.proc.pid}/task/${srv.proc.pid}/children`, 'utf8').trim().split(' ')[0]);
    for (const pid of [serveMain, ...descendantsOf(serveMain)]) expect(schedPolicies(pid).every((x) => x === 0), `pid ${pid}`).toBe(true);
    expect(await selfCheck(p.pid, out)).toMatch(/^PASS/);
  });

  it('no pre-copy round at all (--max-iterations 0): every anonymous page follows the resume; the process checks out', async () => {
    const work = tmpDir('tsnap-pc-');
    const out = join(work, 'moved.out');
    const srv = await serveInPidNs(join(work, 'in'), ['--restore', '--stdout', out]);
    const p = await startProcess(await compileC('pcwriter'), ['16', '4']);
    await p.waitForLine(/^count=20$/, 10_000);
    const m = migrateChild(['--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--postcopy', '--max-iterations', '0']);
    expect(await m.exited, m.events.join('\n')).toBe(0);
    const done = JSON.parse(m.stdout().trim().split('\n').pop()!);
    expect(done.iterations).toBe(1);
    expect(done.postcopy.pages).toBeGreaterThanOrEqual(16 * 256);
    expect((await p.exited).signal).toBe('SIGKILL');
    expect(await selfCheck(p.pid, out)).toMatch(/^PASS/);
  });

  it('--postcopy auto: a writer pre-copy cannot catch switches to post-copy and says why', async () => {
    const work = tmpDir('tsnap-pc-');
    const out = join(work, 'moved.out');
    const srv = await serveInPidNs(join(work, 'in'), ['--restore', '--stdout', out]);
    const p = await startProcess(await compileC('pcwriter'), ['16', '64']);
    await p.waitForLine(/^count=20$/, 10_000);
    const m = migrateChild(['--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--postcopy', 'auto', '--max-iterations', '3', '--downtime-ms', '1']);
    expect(await m.exited, m.events.join('\n')).toBe(0);
    const done = JSON.parse(m.stdout().trim().split('\n').pop()!);
    expect(done.stoppedBecause).toMatch(/not converging|iteration cap/);
    expect(done.postcopy.because).toBe(done.stoppedBecause);
    expect(eventsOf(m.events, 'postcopy')[0]).toMatchObject({ because: done.stoppedBecause });
    expect((await p.exited).signal).toBe('SIGKILL');
    expect(await selfCheck(p.pid, out)).toMatch(/^PASS/);
  });

  it('the connection cut after the resume: the receiver\'s process is killed with a clear message, the source is killed too (the process is lost)', async () => {
    const work = tmpDir('tsnap-pc-');
    const out = join(work, 'moved.out');
    // A slow background fill and a slow push: pages are still missing when the link goes.
    const srv = await serveInPidNs(join(work, 'in'), ['--restore', '--stdout', out], { TSNAP_LAZY_FILL_DELAY_MS: '1000' });
    const link = await relay(srv.port);
    const p = await startProcess(await compileC('pcwriter'), ['16', '64']);
    await p.waitForLine(/^count=20$/, 10_000);
    const m = migrateChild(['--pid', String(p.pid), '--to', `127.0.0.1:${link.port}`, '--postcopy', '--max-iterations', '2'], { TSNAP_POSTCOPY_PUSH_DELAY_MS: '2000' });
    await waitFor(() => eventsOf(srv.events, 'restored').length > 0 || eventsOf(srv.events, 'failed').length > 0);
    expect(eventsOf(srv.events, 'restored').length, srv.events.join('\n')).toBe(1);
    // Cut once the sender knows the receiver committed and resumed: a cut
    // before it read COMMITTED is the other case (the source resumes).
    await waitFor(() => eventsOf(m.events, 'resumed').length > 0);
    link.cut();
    expect(await m.exited).not.toBe(0);
    const lost = eventsOf(m.events, 'postcopy-failed')[0];
    expect(lost.message).toMatch(/post-copy failed after the resume.*never left the source; the process is lost/);
    // What the source does: it is killed, not resumed (the receiver's copy ran).
    expect((await p.exited).signal).toBe('SIGKILL');
    await waitFor(() => eventsOf(srv.events, 'postcopy-failed').length > 0);
    expect(eventsOf(srv.events, 'postcopy-failed')[0].message).toMatch(/post-copy failed after the resume.*is lost/);
    await waitFor(() => inOtherPidNs(p.pid).length === 0);
  });

  it('tsnap migrate SIGKILLed after the resume: the guardian kills the source instead of resuming it (never two copies running)', async () => {
    const work = tmpDir('tsnap-pc-');
    const out = join(work, 'moved.out');
    const srv = await serveInPidNs(join(work, 'in'), ['--restore', '--stdout', out], { TSNAP_LAZY_FILL_DELAY_MS: '1000' });
    const p = await startProcess(await compileC('pcwriter'), ['16', '64']);
    await p.waitForLine(/^count=20$/, 10_000);
    const m = migrateChild(['--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--postcopy', '--max-iterations', '2'], { TSNAP_POSTCOPY_PUSH_DELAY_MS: '2000' });
    // Killed once it knows the receiver runs the process (its 'resumed' event).
    await waitFor(() => eventsOf(m.events, 'resumed').length > 0 || eventsOf(srv.events, 'failed').length > 0);
    expect(eventsOf(srv.events, 'restored').length, srv.events.join('\n')).toBe(1);
    m.child.kill('SIGKILL');
    // Resumed instead, it would run on (as the receiver's copy might): no exit within the wait.
    const exit = await Promise.race([p.exited, new Promise<null>((r) => setTimeout(() => r(null), 15_000))]);
    expect(exit?.signal).toBe('SIGKILL');
    await waitFor(() => eventsOf(srv.events, 'postcopy-failed').length > 0);
    await waitFor(() => inOtherPidNs(p.pid).length === 0);
  });

  it('a receiver that cannot build the process live refuses post-copy before the commit: the source runs on, untracked', async () => {
    const work = tmpDir('tsnap-pc-');
    // Same pid namespace: the source holds the pid, so the receiver can only restore from the chain.
    const { port, proc } = await startServe(join(work, 'in'), ['--restore']);
    servers.push(proc);
    const p = await startProcess(await compileC('pcwriter'), ['8', '4']);
    await p.waitForLine(/^count=20$/, 10_000);
    const m = migrateChild(['--pid', String(p.pid), '--to', `127.0.0.1:${port}`, '--postcopy', '--max-iterations', '1']);
    expect(await m.exited).not.toBe(0);
    expect(m.events.join('\n')).toMatch(/post-copy needs the process built while it arrives.*migrate without --postcopy/);
    expect(m.events.join('\n')).toMatch(/it runs on where it was/);
    const before = p.lines().length;
    await waitFor(() => p.lines().length > before + 2);
    expect(readStatus(p.pid).tracerPid).toBe(0);
    expect(findHolders(p.pid)).toEqual([]);
  });
});

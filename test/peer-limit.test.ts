/**
 * `migrate --peer-timeout`: a receiver that stops answering without closing
 * never holds a frozen source hostage. The receiver here is a fake in the
 * test (it speaks the wire with tsnap's own framing): it greets, reads the
 * rounds, answers READY for the final one, and then goes silent in the way
 * each case names. The source is a real process checking its own memory.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { createServer, type Server, type Socket } from 'node:net';
import { readdirSync, readlinkSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { compileC, startProcess, useProcessCleanup, type Running } from './helpers/fixtures.js';
import { startTsnap, killPid, tsnap } from './helpers/tsnap.js';
import { readStatus } from '../src/proc/index.js';
import { findHolders } from '../src/track/untrack.js';
import { FrameReader, Msg, encodeDoc, send, decodeDoc } from '../src/migrate/wire.js';
import { ExitCode } from '../src/errors.js';
import { setsockopt } from '../src/sys/index.js';
import { eventually } from './helpers/eventually.js';

useProcessCleanup();

type Silence =
  /** After READY it reads nothing more: the window closes and stays shut, before COMMIT can go. */
  | 'zero-window'
  /** It reads everything, COMMIT included, and never answers. */
  | 'no-commit-answer';

interface Fake {
  port: number;
  /** Frames seen, by type name, in order. */
  seen: string[];
  /** Resolves once the fake has gone silent (READY sent and reading stopped, or COMMIT read). */
  silent: Promise<void>;
  /** The connection, for a test that breaks it. */
  conn: Promise<Socket>;
}

const servers: Server[] = [];
const senders: number[] = [];
afterEach(async () => {
  for (const pid of senders.splice(0)) await killPid(pid);
  for (const s of servers.splice(0)) s.close();
});

function fakeReceiver(mode: Silence): Promise<Fake> {
  const seen: string[] = [];
  let gotSilent!: () => void;
  const silent = new Promise<void>((r) => { gotSilent = r; });
  let gotConn!: (s: Socket) => void;
  const conn = new Promise<Socket>((r) => { gotConn = r; });
  const server = createServer((sock) => {
    sock.on('error', () => {});
    gotConn(sock);
    // A small receive buffer: the window shuts after a few KiB once it stops reading.
    const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd === 'number') setsockopt(fd, 1 /* SOL_SOCKET */, 8 /* SO_RCVBUF */, 16 << 10);
    const reader = new FrameReader(sock);
    void (async () => {
      for (;;) {
        const f = await reader.next().catch(() => null);
        if (!f) return;
        seen.push(Msg[f.type] ?? String(f.type));
        if (f.type === Msg.Hello) await send(sock, encodeDoc(Msg.HelloOk, { version: 2, dir: '/fake/receiver' }));
        else if (f.type === Msg.IterBegin && decodeDoc<{ ready?: boolean }>(f).ready) {
          await send(sock, encodeDoc(Msg.Ready, {}));
          if (mode === 'zero-window') {
            // Reads nothing more: the reader buffers at most one frame's worth, then pauses the socket.
            gotSilent();
            return;
          }
        } else if (f.type === Msg.Commit) gotSilent();
      }
    })();
  });
  servers.push(server);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ port: (server.address() as { port: number }).port, seen, silent, conn })));
}

/** The source as a failed migration must leave it: running, untraced, not tracked, no userfaultfd, its memory intact. */
/** Every thread's scheduling policy (stat field 41). */
function policies(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).map((t) => {
    const st = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8');
    return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[38]);
  });
}

async function expectRunsOnUntouched(p: Running): Promise<void> {
  const st = readStatus(p.pid);
  expect(st.tracerPid).toBe(0);
  expect(['R', 'S']).toContain(st.state);
  expect(findHolders(p.pid)).toEqual([]);
  const fds = readdirSync(`/proc/${p.pid}/fd`).map((fd) => { try { return readlinkSync(`/proc/${p.pid}/fd/${fd}`); } catch { return ''; } });
  expect(fds.filter((l) => l.includes('userfaultfd'))).toEqual([]);
  // Frozen in the window's real-time class (the guardian's FREEZE), resumed in its own: SCHED_OTHER again.
  expect(policies(p.pid).every((x) => x === 0), `policies ${policies(p.pid)}`).toBe(true);
  // It goes on counting, and its own check of every page passes.
  const n = p.lines().length;
  await p.waitForLine(/^count=/, 10_000, n);
  const m = p.lines().length;
  process.kill(p.pid, 'SIGUSR1');
  expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000, m)).toMatch(/^PASS/);
}

describe('migrate --peer-timeout: a silent receiver', () => {
  it('a zero window during the frozen final round: the sender gives up after the limit, the source runs on untouched', async () => {
    const fake = await fakeReceiver('zero-window');
    // 64 MiB rewriting 64 pages every 5 ms: the final round carries far more than the socket buffers hold.
    const p = await startProcess(await compileC('pcwriter'), ['64', '64']);
    await p.waitForLine(/^count=/, 10_000);
    const m = startTsnap(['migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${fake.port}`, '--token', 'sesame', '--max-iterations', '1', '--no-auto-converge', '--peer-timeout', '2']);
    senders.push(m.child.pid!);
    await fake.silent;
    const silentAt = Date.now();
    // Frozen now (READY came before the freeze), and stuck on the shut window.
    await eventually(() => readStatus(p.pid).state, (s) => s === 't', 10_000, 'source frozen');
    const r = await m.done;
    const waited = Date.now() - silentAt;
    expect(r.code).toBe(ExitCode.targetFailed);
    const lines = r.stderr.trim().split('\n').filter((l) => l.startsWith('tsnap: '));
    expect(lines.at(-1)).toMatch(new RegExp(`^tsnap: migration of process ${p.pid} failed; it runs on where it was: the receiver at 127\\.0\\.0\\.1:${fake.port} made no progress for 2 s \\(--peer-timeout\\) while process ${p.pid} was frozen, before the commit; tsnap gave up on it$`));
    // Well above the limit, far below TCP's own (~15 min, or never for a zero window).
    expect(waited).toBeGreaterThanOrEqual(1900);
    expect(waited).toBeLessThan(30_000);
    expect(fake.seen).not.toContain('Commit');
    await expectRunsOnUntouched(p);
  });

  it('silence after COMMIT: the source stays frozen with one warning (even with --quiet); SIGTERM to the sender resumes it and says it may run twice', async () => {
    const fake = await fakeReceiver('no-commit-answer');
    const p = await startProcess(await compileC('migrant'), ['16']);
    await p.waitForLine(/^count=/, 10_000);
    // The watchdog's bound past the wait: the source's threads stay in the window's class while it lasts.
    const m = startTsnap(['--quiet', 'migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${fake.port}`, '--token', 'sesame', '--peer-timeout', '2'], { TSNAP_RT_BOUND_MS: '60000' });
    senders.push(m.child.pid!);
    // --quiet hides warnings, but not this one: the source is frozen.
    let stderr = '';
    m.child.stderr!.on('data', (d) => { stderr += d; });
    await fake.silent;
    await eventually(() => stderr, (s) => /has not answered COMMIT/.test(s), 30_000, 'the warning');
    const warning = stderr.split('\n').find((l) => /has not answered COMMIT/.test(l))!;
    expect(warning).toMatch(new RegExp(`the receiver at 127\\.0\\.0\\.1:${fake.port} has not answered COMMIT for 2 s; process ${p.pid} stays frozen here .*SIGINT or SIGTERM to this tsnap \\(pid ${m.child.pid}\\) resumes process ${p.pid}, which then runs twice if the receiver did commit`));
    // Still frozen, never resumed on its own: the receiver may have committed.
    expect(readStatus(p.pid).state).toBe('t');
    expect(m.child.exitCode).toBeNull();
    // Frozen into the window's class by the guardian (sender.ts, raiseTarget).
    expect(policies(p.pid).every((x) => x === 1), `policies ${policies(p.pid)}`).toBe(true);
    process.kill(m.child.pid!, 'SIGTERM');
    const r = await m.done;
    expect(r.code).toBe(128 + 15);
    expect(r.stderr.trim().split('\n').at(-1)).toMatch(new RegExp(`^tsnap: migration of process ${p.pid} failed; it runs on where it was: interrupted by SIGTERM; COMMIT had been sent: if the receiver at 127\\.0\\.0\\.1:${fake.port} committed before the connection ended, process ${p.pid} runs there too \\(check it, and stop one of them\\)$`));
    await expectRunsOnUntouched(p);
  });

  it('silence after COMMIT, then the connection breaks: the source resumes, and the line says the receiver may have it too', async () => {
    const fake = await fakeReceiver('no-commit-answer');
    const p = await startProcess(await compileC('migrant'), ['16']);
    await p.waitForLine(/^count=/, 10_000);
    const m = startTsnap(['migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${fake.port}`, '--token', 'sesame', '--peer-timeout', '2']);
    senders.push(m.child.pid!);
    let stderr = '';
    m.child.stderr!.on('data', (d) => { stderr += d; });
    await fake.silent;
    await eventually(() => stderr, (s) => /has not answered COMMIT/.test(s), 30_000, 'the warning');
    (await fake.conn).resetAndDestroy();
    const r = await m.done;
    expect(r.code).toBe(ExitCode.targetFailed);
    expect(r.stderr.trim().split('\n').at(-1)).toMatch(new RegExp(`^tsnap: migration of process ${p.pid} failed; it runs on where it was: migration peer closed the connection.*; COMMIT had been sent: if the receiver at 127\\.0\\.0\\.1:${fake.port} committed before the connection ended, process ${p.pid} runs there too`));
    await expectRunsOnUntouched(p);
  });

  it('silence after COMMIT, then the receiver host goes dead (its packets dropped): keepalive ends the wait in seconds, the source resumes', async () => {
    const fake = await fakeReceiver('no-commit-answer');
    const p = await startProcess(await compileC('migrant'), ['16']);
    await p.waitForLine(/^count=/, 10_000);
    const m = startTsnap(['migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${fake.port}`, '--token', 'sesame', '--peer-timeout', '2']);
    senders.push(m.child.pid!);
    let stderr = '';
    m.child.stderr!.on('data', (d) => { stderr += d; });
    await fake.silent;
    await eventually(() => stderr, (s) => /has not answered COMMIT/.test(s), 30_000, 'the warning');
    // Everything the sender wrote is acknowledged by now: only keepalive can tell a dead host. The
    // "host" dies: whatever leaves the fake's port is dropped (this port only, removed below).
    const rule = ['OUTPUT', '-o', 'lo', '-p', 'tcp', '--sport', String(fake.port), '-m', 'comment', '--comment', 'tsnap-test-peer-limit', '-j', 'DROP'];
    execFileSync('iptables', ['-I', ...rule]);
    try {
      const dead = Date.now();
      const r = await m.done;
      // Keepalive idle 2 s, then 3 probes 1 s apart: ~5 s; far below TCP's own (~15 min, or never).
      expect(Date.now() - dead).toBeLessThan(30_000);
      expect(r.code).toBe(ExitCode.targetFailed);
      expect(r.stderr.trim().split('\n').at(-1)).toMatch(new RegExp(`^tsnap: migration of process ${p.pid} failed; it runs on where it was: migration connection failed: .*ETIMEDOUT.*; COMMIT had been sent: if the receiver at 127\\.0\\.0\\.1:${fake.port} committed before the connection ended, process ${p.pid} runs there too`));
    } finally {
      execFileSync('iptables', ['-D', ...rule]);
    }
    await expectRunsOnUntouched(p);
  });

  it('post-copy, silence after COMMIT (before COMMITTED, so before any resume there): the same warning; SIGINT resumes the source', async () => {
    const fake = await fakeReceiver('no-commit-answer');
    const p = await startProcess(await compileC('migrant'), ['16']);
    await p.waitForLine(/^count=/, 10_000);
    const m = startTsnap(['migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${fake.port}`, '--token', 'sesame', '--postcopy', '--peer-timeout', '2']);
    senders.push(m.child.pid!);
    let stderr = '';
    m.child.stderr!.on('data', (d) => { stderr += d; });
    await fake.silent;
    expect(fake.seen).toContain('Postcopy');
    await eventually(() => stderr, (s) => /has not answered COMMIT/.test(s), 30_000, 'the warning');
    expect(readStatus(p.pid).state).toBe('t');
    // Frozen past the watchdog's bound (1 s): it gave the source's threads their own class back.
    expect(policies(p.pid).every((x) => x === 0), `policies ${policies(p.pid)}`).toBe(true);
    process.kill(m.child.pid!, 'SIGINT');
    const r = await m.done;
    expect(r.code, `signal ${r.signal}; ${r.stderr}`).toBe(128 + 2);
    expect(r.stderr.trim().split('\n').at(-1)).toMatch(/interrupted by SIGINT; COMMIT had been sent: if the receiver at .* committed before the connection ended, process \d+ runs there too/);
    await expectRunsOnUntouched(p);
  });

  it('a --peer-timeout that is not a number of seconds is refused in one line (exit 2)', async () => {
    const r = await tsnap('migrate', '--pid', String(process.pid), '--to', '127.0.0.1:9', '--token', 'sesame', '--peer-timeout', '-1');
    expect(r.code).toBe(ExitCode.usage);
    expect(r.stderr).toMatch(/--peer-timeout: expected a number of seconds up to 86400 \(0: no limit\), got "-1"/);
  });
});

/**
 * Real applications, when the machine has them: a JVM 17 HTTP server
 * (com.sun.net.httpserver: NIO, epoll, ~16 threads) keeps its count and
 * answers a client whose keep-alive connection stays open through every
 * scenario (test/helpers/scenarios.ts); a server with a busy client (a
 * ping every 10 ms over one connection) keeps that connection through
 * dump after dump (--tcp-established).
 */
import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { readdirSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { join } from 'node:path';
import { startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { runScenarios, Conversation } from './helpers/scenarios.js';
import { tsnap, restoreDetached, killPid } from './helpers/tsnap.js';
import { lockRulesOf } from './helpers/lock-rules.js';
import { freePort } from './helpers/ports.js';
import { isGone } from './helpers/processes.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

function have(cmd: string): boolean {
  try { execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }); return true; } catch { return false; }
}

const JAVA_SERVER = `import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.atomic.AtomicInteger;

public class Srv {
    public static void main(String[] args) throws Exception {
        AtomicInteger hits = new AtomicInteger();
        HttpServer s = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 50);
        s.createContext("/", ex -> {
            byte[] body = ("hit " + hits.incrementAndGet()).getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(200, body.length);
            ex.getResponseBody().write(body);
            ex.close();
        });
        s.start();
        System.out.println("READY port=" + s.getAddress().getPort());
        Thread.currentThread().join();
    }
}
`;

/** GET / through `agent` (keep-alive: the same connection each time). */
function httpGet(port: number, agent: Agent): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.end();
  });
}

describe.skipIf(!have('javac') || !have('java'))('JVM 17 HTTP server (NIO)', () => {
  it('a keep-alive client connection gets its answers and the count goes on, through leave-running, a pre-dump chain, kill and migrate', async () => {
    const classes = tmpDir('tsnap-jvm-classes-');
    writeFileSync(join(classes, 'Srv.java'), JAVA_SERVER);
    execFileSync('javac', ['-d', classes, join(classes, 'Srv.java')], { stdio: 'ignore' });
    // Through python: fds the test runner leaks are closed before the JVM starts.
    // Idle keep-alive connections are closed after 30 s by default: longer
    // than a scenario may take on a loaded machine.
    const p = await startProcess('python3', ['-c', `import os, sys; os.closerange(3, 1024); os.execvp('java', ['java', '-Xmx64m', '-XX:+UseSerialGC', '-Dsun.net.httpserver.idleInterval=3600', '-cp', sys.argv[1], 'Srv'])`, classes],
      { readyPattern: /^READY/, timeoutMs: 30_000, stdin: 'ignore' });
    const port = Number(p.readyInfo.port);
    // Raw HTTP over one connection: an agent would silently open a new one if it broke.
    const c = await Conversation.open(port);
    const complete = (g: string) => {
      const h = g.indexOf('\r\n\r\n');
      const len = /content-length: (\d+)/i.exec(g)?.[1];
      return h >= 0 && len !== undefined && g.length >= h + 4 + Number(len);
    };
    const get = async () => { const r = await c.ask('GET / HTTP/1.1\r\nHost: x\r\n\r\n', complete); return r.slice(r.indexOf('\r\n\r\n') + 4); };
    let hits = 0;
    const last = await runScenarios(p, {
      work: tmpDir('tsnap-jvm-'),
      check: async (step, pid) => {
        expect(readdirSync(`/proc/${pid}/task`).length, 'its threads').toBeGreaterThan(5);
        expect(await get(), step).toBe(`hit ${++hits}`);
        // And a new client.
        expect(await httpGet(port, new Agent({ keepAlive: false })), step).toBe(`hit ${++hits}`);
      },
    });
    c.end();
    await killPid(last);
  }, 180_000);
});

/**
 * A client that sends a numbered ping every 10 ms over one connection and
 * checks that every answer comes, in order, whatever happens to the server.
 */
class Pinger {
  private readonly sock: Socket;
  private sent = 0;
  private got = 0;
  private buf = '';
  private timer: NodeJS.Timeout | null = null;
  readonly problems: string[] = [];

  constructor(readonly port: number, private readonly ping: (n: number) => string, private readonly answer: (n: number) => string) {
    this.sock = connect(port, '127.0.0.1');
    this.sock.on('data', (d) => {
      this.buf += d;
      for (let i = this.buf.indexOf('\n'); i >= 0; i = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, i).replace(/\r$/, '');
        this.buf = this.buf.slice(i + 1);
        const want = this.answer(this.got + 1);
        if (line !== want) this.problems.push(`answer ${this.got + 1}: ${JSON.stringify(line)}, not ${JSON.stringify(want)}`);
        this.got++;
      }
    });
    this.sock.on('error', (e) => this.problems.push(`error: ${e.message}`));
    this.sock.on('close', () => this.problems.push('the connection closed'));
  }

  async start(): Promise<void> {
    await new Promise((res) => this.sock.once('connect', res));
    this.timer = setInterval(() => { this.sock.write(this.ping(++this.sent)); }, 10);
  }

  get answered(): number { return this.got; }

  /** Waits until `n` answers came (or the time is up). */
  async waitFor(n: number, ms = 20_000): Promise<number> {
    for (let t = 0; t < ms && this.got < n && this.problems.length === 0; t += 20) await new Promise((r) => setTimeout(r, 20));
    return this.got;
  }

  /** Stops pinging and waits for every answer still due. */
  async stop(): Promise<{ sent: number; got: number }> {
    if (this.timer) clearInterval(this.timer);
    await this.waitFor(this.sent);
    this.sock.destroy();
    return { sent: this.sent, got: this.got };
  }
}

/**
 * `cycles` kill-mode dumps and restores of `pid` while `pinger` pings it:
 * each restore under a new pid (the connection does not care, and the
 * killed one's pid is reaped late here). Every cycle must see new answers.
 */
async function cyclesUnderPings(first: { pid: number; exited: Promise<unknown> }, pinger: Pinger, work: string, cycles: number): Promise<void> {
  let pid = first.pid;
  let gone: Promise<unknown> = first.exited;
  for (let i = 0; i < cycles; i++) {
    const before = pinger.answered;
    const dir = join(work, `img${i}`);
    const d = await tsnap('dump', '--pid', String(pid), '--dir', dir, '--tcp-established');
    expect(d.code, d.stderr).toBe(0);
    await gone;
    expect(lockRulesOf(pinger.port).length, 'the dumped connection stays locked until its restore').toBe(2);
    const r = await restoreDetached(dir, join(work, `pid${i}`), ['--new-pid']);
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(lockRulesOf(pinger.port), 'the restore lifted the lock').toEqual([]);
    pid = r.pid;
    const restored = r.pid;
    // isGone: the zombie may be reaped between two reads of its /proc entry.
    gone = (async () => { for (let t = 0; t < 500 && !isGone(restored); t++) await new Promise((res) => setTimeout(res, 10)); })();
    expect(await pinger.waitFor(before + 5), `answers after restore ${i + 1}; ${pinger.problems.join('; ')}`).toBeGreaterThanOrEqual(before + 5);
    expect(pinger.problems).toEqual([]);
  }
  const end = await pinger.stop();
  expect(pinger.problems).toEqual([]);
  expect(end.got).toBe(end.sent);
  await killPid(pid);
}

describe.skipIf(!have('iptables-restore'))('a busy client over one connection (--tcp-established, the connection locked while the server is away)', () => {
  it('a python echo server: 5 dumps and restores, every ping answered, in order, no rule left', async () => {
    const work = tmpDir('tsnap-pinged-');
    const p = await startPython(`
import os, socket
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
os.closerange(3, l.fileno())
print('READY port=%d' % l.getsockname()[1], flush=True)
c, _ = l.accept()
l.close()
f = c.makefile('rb')
for line in f:
    c.sendall(line.replace(b'ping', b'pong'))
`, [], { stdin: 'ignore' });
    const pinger = new Pinger(Number(p.readyInfo.port), (n) => `ping ${n}\n`, (n) => `pong ${n}`);
    await pinger.start();
    expect(await pinger.waitFor(5)).toBeGreaterThanOrEqual(5);
    await cyclesUnderPings(p, pinger, work, 5);
    expect(lockRulesOf(pinger.port)).toEqual([]);
  }, 180_000);

  it.skipIf(!have('redis-server'))('redis-server: 5 dumps and restores under PINGs every 10 ms on one connection', async () => {
    const work = tmpDir('tsnap-redis-pinged-');
    const port = await freePort();
    const p = await startProcess('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', work],
      { readyPattern: /Ready to accept connections/, stdin: 'ignore' });
    const pinger = new Pinger(port, () => 'PING\r\n', () => '+PONG');
    await pinger.start();
    expect(await pinger.waitFor(5)).toBeGreaterThanOrEqual(5);
    await cyclesUnderPings(p, pinger, work, 5);
    expect(lockRulesOf(pinger.port)).toEqual([]);
  }, 180_000);
});

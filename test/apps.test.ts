/**
 * Real applications, when the machine has them: redis-server (apt) keeps
 * its keys and answers on its restored listening socket; a JVM 17 HTTP
 * server (com.sun.net.httpserver: NIO, epoll, ~16 threads) keeps its count
 * and answers a client whose keep-alive connection was open at the dump.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { connect } from 'node:net';
import { readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { join } from 'node:path';
import { startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, restoreDetached, useRestoredCleanup, killPid } from './helpers/tsnap.js';

useProcessCleanup();
useRestoredCleanup();
afterAll(() => cleanupTmpDirs());

function have(cmd: string): boolean {
  try { execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }); return true; } catch { return false; }
}

/** One RESP command over a fresh connection (closed afterwards), the reply's first line. */
function redis(port: number, ...args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = connect(port, '127.0.0.1');
    let got = '';
    c.on('data', (d) => {
      got += d;
      const lines = got.split('\r\n');
      if (lines[0].startsWith('$') && lines[0] !== '$-1' && lines.length < 3) return;
      c.end();
      resolve(lines[0].startsWith('$') && lines[0] !== '$-1' ? lines[1] : lines[0]);
    });
    c.on('error', reject);
    c.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
  });
}

function sockets(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).filter((fd) => {
    try { return readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:'); } catch { return false; }
  }).length;
}

describe.skipIf(!have('redis-server'))('redis-server', () => {
  it('keys set before the dump are there after restore, and it takes new ones', async () => {
    const work = tmpDir('tsnap-redis-');
    const port = 16000 + (process.pid % 1000);
    const p = await startProcess('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', work],
      { readyPattern: /Ready to accept connections/ });
    const idle = sockets(p.pid);
    expect(await redis(port, 'SET', 'greeting', 'hello')).toBe('+OK');
    expect(await redis(port, 'RPUSH', 'list', 'a', 'b', 'c')).toBe(':3');
    // Client connections are not restorable: wait until redis closed them.
    for (let i = 0; i < 200 && sockets(p.pid) > idle; i++) await new Promise((r) => setTimeout(r, 10));
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(readdirSync(`/proc/${r.pid}/task`).length).toBeGreaterThan(1); // its bio threads came back too
    expect(await redis(port, 'GET', 'greeting')).toBe('hello');
    expect(await redis(port, 'LLEN', 'list')).toBe(':3');
    expect(await redis(port, 'SET', 'after', 'yes')).toBe('+OK');
    expect(await redis(port, 'DBSIZE')).toBe(':3');
  });
});

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
  let classes = '';
  async function startJvm(): Promise<{ p: Awaited<ReturnType<typeof startProcess>>; port: number; agent: Agent }> {
    if (!classes) {
      classes = tmpDir('tsnap-jvm-classes-');
      writeFileSync(join(classes, 'Srv.java'), JAVA_SERVER);
      execFileSync('javac', ['-d', classes, join(classes, 'Srv.java')], { stdio: 'ignore' });
    }
    // Through python: fds the test runner leaks are closed before the JVM starts.
    const p = await startProcess('python3', ['-c', `import os, sys; os.closerange(3, 1024); os.execvp('java', ['java', '-Xmx64m', '-XX:+UseSerialGC', '-cp', sys.argv[1], 'Srv'])`, classes],
      { readyPattern: /^READY/, timeoutMs: 30_000 });
    const port = Number(p.readyInfo.port);
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    expect(await httpGet(port, agent)).toBe('hit 1');
    return { p, port, agent };
  }

  it('a dump (kill) and restore, with a client connection open: the same connection gets its answer, the count goes on', async () => {
    const work = tmpDir('tsnap-jvm-');
    const { p, port, agent } = await startJvm();
    try {
      expect(readdirSync(`/proc/${p.pid}/task`).length).toBeGreaterThan(5);
      const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--tcp-established');
      expect(d.code, d.stderr).toBe(0);
      await p.exited;
      const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
      expect(r.result.code, r.result.stderr).toBe(0);
      expect(await httpGet(port, agent)).toBe('hit 2');
      expect(await httpGet(port, new Agent({ keepAlive: false }))).toBe('hit 3');
      await killPid(r.pid);
    } finally {
      agent.destroy();
    }
  });

  it('a pre-dump chain (two pre-dumps, a dump --parent) restores it with its client connection', async () => {
    const work = tmpDir('tsnap-jvm-');
    const { p, port, agent } = await startJvm();
    try {
      for (const [dir, parent] of [['1', null], ['2', '1']] as const) {
        const pre = await tsnap('pre-dump', '--pid', String(p.pid), '--dir', join(work, dir), ...(parent ? ['--parent', join(work, parent)] : []));
        expect(pre.code, pre.stderr).toBe(0);
        expect(await httpGet(port, agent)).toBe(`hit ${Number(dir) + 1}`);
      }
      const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, '3'), '--parent', join(work, '2'), '--tcp-established');
      expect(d.code, d.stderr).toBe(0);
      await p.exited;
      const r = await restoreDetached(join(work, '3'), join(work, 'pid'));
      expect(r.result.code, r.result.stderr).toBe(0);
      expect(await httpGet(port, agent)).toBe('hit 4');
      await killPid(r.pid);
    } finally {
      agent.destroy();
    }
  });

  it('dump --leave-running with a client connected: the JVM goes on answering it and new clients', async () => {
    const work = tmpDir('tsnap-jvm-');
    const { p, port, agent } = await startJvm();
    try {
      const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--tcp-established', '--leave-running');
      expect(d.code, d.stderr).toBe(0);
      expect(await httpGet(port, agent)).toBe('hit 2');
      expect(await httpGet(port, new Agent({ keepAlive: false }))).toBe('hit 3');
      expect(p.alive()).toBe(true);
    } finally {
      agent.destroy();
    }
  });
});

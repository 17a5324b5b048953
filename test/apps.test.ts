/**
 * Real applications, when the machine has them: redis-server (apt) keeps
 * its keys and answers on its restored listening socket.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { connect } from 'node:net';
import { readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, restoreDetached, useRestoredCleanup } from './helpers/tsnap.js';

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

/**
 * Real programs, each with a client connected across every scenario
 * (test/helpers/scenarios.ts: leave-running, a pre-dump chain, kill,
 * migrate), one program start each: memcached (set/get over one
 * connection), a Go program (goroutines, timers, GC, a TCP server), a
 * node HTTP server with a keep-alive client, a python server keeping a
 * session, and redis-server with one client connection. docs/conformance.md
 * ("Real programs") lists which test covers which program and scenario.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from './helpers/ports.js';
import { FIXTURES_DIR, FIXTURE_CACHE_DIR, startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { runScenarios, Conversation, type Scenario } from './helpers/scenarios.js';
import { killTree } from './helpers/processes.js';
import { eventually } from './helpers/eventually.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

function have(cmd: string): boolean {
  try { execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }); return true; } catch { return false; }
}

for (const [cmd, pkg] of [['memcached', 'memcached'], ['go', 'golang-go'], ['redis-server', 'redis-server']]) {
  if (!have(cmd)) console.warn(`real-programs.test: the ${cmd} cases are skipped (no ${cmd} in PATH: apt install ${pkg})`);
}

/**
 * Starts `argv` with no fd but stdio (the test runner leaks some). READY is
 * printed just before the exec: for a program that says nothing when it
 * listens, the client polls until it connects.
 */
function startClean(argv: string[]) {
  return startProcess('python3', ['-c', `import os, sys; os.closerange(3, 1024); print('READY', flush=True); os.execvp(sys.argv[1], sys.argv[1:])`, ...argv], { stdin: 'ignore' });
}

describe.skipIf(!have('memcached'))('memcached', () => {
  it('a client connection doing set/get keeps its keys and its connection through leave-running, a pre-dump chain, kill and migrate', async () => {
    const work = tmpDir('tsnap-memcached-');
    const at = await freePort();
    // As Debian runs it: dropped to an unprivileged user, worker threads, libevent.
    const p = await startClean(['memcached', '-u', 'nobody', '-l', '127.0.0.1', '-p', String(at), '-U', '0', '-t', '2', '-m', '8', '-c', '64']);
    const c = await Conversation.open(at);
    const set = async (k: string, v: string) => expect(await c.ask(`set ${k} 0 0 ${v.length}\r\n${v}\r\n`, (g) => g.endsWith('\r\n'))).toBe('STORED\r\n');
    const get = (k: string) => c.ask(`get ${k}\r\n`, (g) => g.endsWith('END\r\n'));
    const done: string[] = [];
    let hits = 0;
    const last = await runScenarios(p, {
      work,
      check: async (step) => {
        const key = `${step.replace(/\W/g, '_')}_${done.length}`;
        await set(key, `value-of-${key}-${done.length}`);
        done.push(key);
        for (const [i, k] of done.entries()) {
          const v = `value-of-${k}-${i}`;
          expect(await get(k), step).toBe(`VALUE ${k} 0 ${v.length}\r\n${v}\r\nEND\r\n`);
        }
        if (step === 'start') await set('hits', '0');
        expect(await c.ask('incr hits 1\r\n', (g) => g.endsWith('\r\n')), step).toBe(`${++hits}\r\n`);
      },
    });
    c.end();
    await killTree(last);
  }, 120_000);
});

/** `go build` of test/fixtures/NAME/main.go, cached by its source (GOCACHE in a temp dir). */
function buildGo(name: string): string {
  const src = join(FIXTURES_DIR, name, 'main.go');
  const hash = createHash('sha256').update(readFileSync(src)).digest('hex').slice(0, 16);
  const out = join(FIXTURE_CACHE_DIR, `${name}-go-${hash}`);
  if (existsSync(out)) return out;
  mkdirSync(FIXTURE_CACHE_DIR, { recursive: true });
  const cache = tmpDir('tsnap-gocache-');
  const tmp = `${out}.tmp-${process.pid}`;
  // CGO off: a static binary that makes its own syscalls, as Go programs usually do.
  execFileSync('go', ['build', '-o', tmp, src], { env: { ...process.env, GOCACHE: cache, GOPATH: join(cache, 'path'), GO111MODULE: 'off', CGO_ENABLED: '0', GOFLAGS: '' }, stdio: 'pipe' });
  renameSync(tmp, out);
  return out;
}

describe.skipIf(!have('go'))('a Go program', () => {
  it('goroutines, timers and the GC go on, its memory checks out, and its client connection answers through every scenario', async () => {
    const work = tmpDir('tsnap-go-');
    const bin = buildGo('goserver');
    const p = await startProcess('python3', ['-c', 'import os, sys; os.closerange(3, 1024); os.execv(sys.argv[1], sys.argv[1:])', bin], { stdin: 'ignore' });
    const c = await Conversation.open(Number(p.readyInfo.port));
    const state = async () => Object.fromEntries((await c.line('state')).split(' ').slice(1).map((kv) => kv.split('='))) as Record<string, string>;
    const done: string[] = [];
    let seen = { ticks: -1, gc: -1 };
    const last = await runScenarios(p, {
      work,
      check: async (step: Scenario | 'start') => {
        const key = `${step.replace(/\W/g, '_')}_${done.length}`;
        expect(await c.line(`set ${key} ${done.length}`)).toBe('STORED');
        done.push(key);
        for (const [i, k] of done.entries()) expect(await c.line(`get ${k}`), step).toBe(`VALUE ${i}`);
        // Its timers fire and its collector runs again (polled: they need a moment).
        const s = await eventually(state, (x) => Number(x.ticks) > seen.ticks && Number(x.gc) > seen.gc, 10_000, `${step}: the ticker goroutines and the GC running again`);
        expect(s.memory, step).toBe('ok');
        expect(Number(s.pid)).toBe(p.pid);
        seen = { ticks: Number(s.ticks), gc: Number(s.gc) };
      },
    });
    c.end();
    await killTree(last);
  }, 120_000);
});

const NODE_SERVER = `
const http = require('http');
const sessions = new Map();
let served = 0;
const s = http.createServer((req, res) => {
  served++;
  const sock = req.socket;
  if (!sessions.has(sock)) sessions.set(sock, []);
  const mine = sessions.get(sock);
  if (req.url.startsWith('/add/')) mine.push(req.url.slice(5));
  res.end('served=' + served + ' conn=' + mine.join(',') + ' timer=' + ticks);
});
let ticks = 0;
setInterval(() => { ticks++; }, 5);
s.keepAliveTimeout = 600000;
s.listen(0, '127.0.0.1', () => console.log('READY port=' + s.address().port));
`;

describe('node', () => {
  it('an HTTP server keeps a keep-alive client and what it remembers per connection, through every scenario', async () => {
    const work = tmpDir('tsnap-node-');
    const p = await startProcess('python3', ['-c', 'import os, sys; os.closerange(3, 1024); os.execv(sys.argv[1], sys.argv[1:])', process.execPath, '-e', NODE_SERVER], { stdin: 'ignore' });
    const c = await Conversation.open(Number(p.readyInfo.port));
    // A whole response: headers, then the body its Content-Length says.
    const complete = (g: string) => {
      const h = g.indexOf('\r\n\r\n');
      const len = /content-length: (\d+)/i.exec(g)?.[1];
      return h >= 0 && len !== undefined && g.length >= h + 4 + Number(len);
    };
    const get = async (path: string) => { const r = await c.ask(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`, complete); return r.slice(r.indexOf('\r\n\r\n') + 4); };
    const added: string[] = [];
    let served = 0;
    let timer = -1;
    const last = await runScenarios(p, {
      work,
      check: async (step) => {
        added.push(step.replace(/\W/g, '_'));
        let path = `/add/${added.at(-1)}`;
        // Polled: its interval timer must be seen firing again.
        for (let i = 0; ; i++) {
          const body = await get(path);
          const m = /^served=(\d+) conn=(\S*) timer=(\d+)$/.exec(body);
          expect(m, body).not.toBeNull();
          expect(Number(m![1]), step).toBe(++served);
          expect(m![2], step).toBe(added.join(','));
          if (Number(m![3]) > timer || i >= 500) {
            expect(Number(m![3]), `${step}: its interval timer`).toBeGreaterThan(timer);
            timer = Number(m![3]);
            break;
          }
          path = '/';
          await new Promise((res) => setTimeout(res, 10));
        }
      },
    });
    c.end();
    await killTree(last);
  }, 120_000);
});

describe('python', () => {
  it('a threaded server keeps each session\'s running total and its connection through every scenario', async () => {
    const work = tmpDir('tsnap-python-');
    const p = await startPython(`
import os, socket, threading
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('127.0.0.1', 0)); l.listen()
os.closerange(3, l.fileno())
data = bytearray(os.urandom(1 << 20))
import hashlib
want = hashlib.sha256(data).hexdigest()
def session(c):
    total = 0
    for line in c.makefile('rb'):
        total += int(line)
        c.sendall(b'%d %s\\n' % (total, b'ok' if hashlib.sha256(data).hexdigest() == want else b'bad'))
print('READY port=%d' % l.getsockname()[1], flush=True)
while True:
    c, _ = l.accept()
    threading.Thread(target=session, args=(c,), daemon=True).start()
`, [], { stdin: 'ignore' });
    const c = await Conversation.open(Number(p.readyInfo.port));
    let total = 0;
    let n = 0;
    const last = await runScenarios(p, {
      work,
      check: async (step) => {
        total += ++n;
        expect(await c.line(String(n)), step).toBe(`${total} ok`);
      },
    });
    c.end();
    await killTree(last);
  }, 120_000);
});

describe.skipIf(!have('redis-server'))('redis-server', () => {
  it('one client connection (RESP) keeps its keys, its selected database and its connection through every scenario', async () => {
    const work = tmpDir('tsnap-redis-all-');
    const at = await freePort();
    const p = await startProcess('redis-server', ['--port', String(at), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', work],
      { readyPattern: /Ready to accept connections/, stdin: 'ignore' });
    const c = await Conversation.open(at);
    const cmd = (...a: string[]) => c.ask(`*${a.length}\r\n${a.map((x) => `$${Buffer.byteLength(x)}\r\n${x}\r\n`).join('')}`,
      (g) => g.endsWith('\r\n') && (!g.startsWith('$') || g.startsWith('$-1') || g.split('\r\n').length >= 3));
    // Connection state the server keeps: the selected database and the client's name.
    expect(await cmd('SELECT', '3')).toBe('+OK\r\n');
    expect(await cmd('CLIENT', 'SETNAME', 'kept')).toBe('+OK\r\n');
    let n = 0;
    const last = await runScenarios(p, {
      work,
      check: async (step, pid) => {
        expect(readdirSync(`/proc/${pid}/task`).length, 'its bio threads').toBeGreaterThan(1);
        expect(await cmd('RPUSH', 'steps', step), step).toBe(`:${++n}\r\n`);
        expect(await cmd('LINDEX', 'steps', '0')).toBe('$5\r\nstart\r\n');
        expect(await cmd('CLIENT', 'GETNAME')).toBe('$4\r\nkept\r\n');
        expect(await cmd('DBSIZE')).toBe(':1\r\n'); // database 3, still selected
      },
    });
    c.end();
    await killTree(last);
  }, 120_000);
});

/**
 * nginx, when the machine has it (apt: nginx-light): a daemon master and
 * two workers running as www-data, dumped with --tree while a client holds
 * a keep-alive connection to a worker. After a kill-mode dump and restore,
 * and after a pre-dump chain, the same connection gets its next answer
 * from the same worker, new connections are served, and the master still
 * manages its workers (a reload through SIGHUP starts new ones over its
 * channels). With --leave-running the original goes on the same way.
 */
import { describe, it, expect, afterEach, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { freePort } from './helpers/ports.js';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, restoreDetached } from './helpers/tsnap.js';
import { registerPid, descendantsOf, isGone, killTree } from './helpers/processes.js';
import { startServe } from './helpers/serve.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

function nginxBinary(): string | null {
  for (const p of ['/usr/sbin/nginx', '/usr/bin/nginx']) if (existsSync(p)) return p;
  return null;
}

function haveUser(name: string): boolean {
  return readFileSync('/etc/passwd', 'utf8').split('\n').some((l) => l.startsWith(`${name}:`));
}

const NGINX = nginxBinary();
const skipReason = !NGINX ? 'nginx is not installed (apt-get install nginx-light)' : !haveUser('www-data') ? 'no www-data user' : null;
if (skipReason) console.warn(`test/nginx.test.ts skipped: ${skipReason}`);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, f: () => T | null | undefined | false, ms = 10000): Promise<T> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(20)) {
    const v = f();
    if (v) return v;
  }
  throw new Error(`timeout waiting for ${what}`);
}

/** A keep-alive HTTP/1.1 client on one connection: each get() is one request on it. */
class Client {
  private buf = '';
  private waiters: (() => void)[] = [];
  closed = false;
  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => { this.buf += d; for (const w of this.waiters.splice(0)) w(); });
    sock.on('close', () => { this.closed = true; for (const w of this.waiters.splice(0)) w(); });
    sock.on('error', () => {});
  }

  static open(port: number): Promise<Client> {
    return new Promise((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => resolve(new Client(s)));
      s.on('error', reject);
    });
  }

  /** The body of the answer to GET / (a one-line body, Content-Length framed). */
  async get(ms = 5000): Promise<string> {
    this.buf = '';
    this.sock.write('GET / HTTP/1.1\r\nHost: test\r\n\r\n');
    const end = Date.now() + ms;
    for (;;) {
      const m = /Content-Length: (\d+)\r\n[\s\S]*?\r\n\r\n/i.exec(this.buf);
      if (m && this.buf.length >= m.index + m[0].length + Number(m[1])) return this.buf.slice(m.index + m[0].length, m.index + m[0].length + Number(m[1])).trim();
      if (this.closed) throw new Error(`connection closed; got ${JSON.stringify(this.buf)}`);
      if (Date.now() > end) throw new Error(`no answer; got ${JSON.stringify(this.buf)}`);
      await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 100); });
    }
  }

  end(): void { this.sock.destroy(); }
}

async function fresh(port: number): Promise<string> {
  const c = await Client.open(port);
  try { return await c.get(); } finally { c.end(); }
}

function uidOf(pid: number): number {
  return Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

interface Nginx { dir: string; port: number; master: number; workers: number[] }

const started: number[] = [];
afterEach(async () => {
  for (const m of started.splice(0)) await killTree(m);
});

/** nginx as a daemon (it forks away and calls setsid), master + 2 workers as www-data. */
async function startNginx(): Promise<Nginx> {
  const dir = tmpDir('tsnap-nginx-');
  const port = await freePort();
  for (const d of ['logs', 'tmp']) mkdirSync(join(dir, d));
  writeFileSync(join(dir, 'nginx.conf'), `
daemon on;
master_process on;
worker_processes 2;
user www-data;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log info;
# Workers keep the test's process marker (test/helpers/processes.ts).
env TSNAP_TEST_OWNER;
events { worker_connections 64; }
http {
  access_log ${dir}/logs/access.log;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:${port};
    location / { return 200 "worker $pid\\n"; }
  }
}
`);
  // The www-data workers must reach their logs and temp dirs.
  execFileSync('chmod', ['-R', 'a+rwX', dir]);
  execFileSync(NGINX!, ['-p', dir, '-c', join(dir, 'nginx.conf')], { stdio: 'ignore' });
  const master = await until('nginx.pid', () => { try { return Number(readFileSync(join(dir, 'nginx.pid'), 'utf8').trim()); } catch { return 0; } });
  started.push(master);
  registerPid(master);
  const workers = await until('two workers', () => { const w = descendantsOf(master); return w.length === 2 ? w : null; });
  for (const w of workers) registerPid(w);
  return { dir, port, master, workers };
}

/** The workers of master now, once there are two of them. */
async function workersOf(master: number): Promise<number[]> {
  return until(`the workers of ${master}`, () => { const w = descendantsOf(master); return w.length === 2 ? w : null; });
}

/** SIGHUP: the master re-reads its configuration, starts two new workers and tells the old ones (over their channels) to finish. */
async function reload(master: number, before: number[]): Promise<number[]> {
  process.kill(master, 'SIGHUP');
  return until('new workers after the reload', () => {
    const w = descendantsOf(master);
    return w.length === 2 && w.every((p) => !before.includes(p)) ? w : null;
  });
}

/**
 * The dumped processes gone and reaped: their orphans are reaped by PID 1
 * here, late, and a restore under the same pids needs them free.
 */
async function reaped(pids: number[]): Promise<void> {
  await until('the dumped nginx reaped', () => pids.every((p) => !existsSync(`/proc/${p}`)), 15000);
}

async function expectServes(n: Nginx, client: Client, worker: string, master: number): Promise<void> {
  // The connection the client held at the dump: the same worker answers on it.
  expect(await client.get()).toBe(worker);
  const workers = await workersOf(master);
  for (const w of workers) expect(uidOf(w)).toBe(33);
  expect(uidOf(master)).toBe(0);
  expect(await fresh(n.port)).toMatch(/^worker \d+$/);
  const renewed = await reload(master, workers);
  for (const w of renewed) registerPid(w);
  expect(await fresh(n.port)).toMatch(new RegExp(`^worker (${renewed.join('|')})$`));
}

describe.skipIf(skipReason !== null)('nginx', () => {
  it('dump --tree (kill) and restore: its client connection, its www-data workers and its master come back', async () => {
    const n = await startNginx();
    const client = await Client.open(n.port);
    const worker = await client.get();
    const img = join(n.dir, 'img');
    const d = await tsnap('dump', '--tree', '--pid', String(n.master), '--dir', img, '--tcp-established');
    expect(d.code, d.stderr).toBe(0);
    await reaped([n.master, ...n.workers]);
    const r = await restoreDetached(img, join(n.dir, 'rpid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.result.stderr).not.toMatch(/restore check of \d+: fd/);
    started.push(r.pid);
    expect(r.pid).toBe(n.master);
    await expectServes(n, client, worker, r.pid);
    client.end();
  }, 60000);

  it('a pre-dump chain (pre-dump, pre-dump --parent, dump --parent) restores the same way', async () => {
    const n = await startNginx();
    const client = await Client.open(n.port);
    const worker = await client.get();
    const img = join(n.dir, 'img');
    let t = await tsnap('pre-dump', '--tree', '--pid', String(n.master), '--dir', join(img, '1'));
    expect(t.code, t.stderr).toBe(0);
    expect(await client.get()).toBe(worker); // it runs on between the rounds
    t = await tsnap('pre-dump', '--tree', '--pid', String(n.master), '--dir', join(img, '2'), '--parent', join(img, '1'));
    expect(t.code, t.stderr).toBe(0);
    t = await tsnap('dump', '--tree', '--pid', String(n.master), '--dir', join(img, '3'), '--parent', join(img, '2'), '--tcp-established');
    expect(t.code, t.stderr).toBe(0);
    await reaped([n.master, ...n.workers]);
    const r = await restoreDetached(join(img, '3'), join(n.dir, 'rpid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    started.push(r.pid);
    await expectServes(n, client, worker, r.pid);
    client.end();
  }, 60000);

  it('migrate --tree --tcp-established to a tsnap serve --restore: the same client connection goes on with the moved server', async () => {
    const n = await startNginx();
    const client = await Client.open(n.port);
    const worker = await client.get();
    const srv = await startServe(join(n.dir, 'in'), ['--restore', '--count', '1']);
    const m = await tsnap('migrate', '--tree', '--tcp-established', '--pid', String(n.master), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--max-iterations', '3');
    expect(m.code, m.stderr).toBe(0);
    await until('the receiver to restore it', () => srv.events.some((e) => e.includes('"restored"')), 30000);
    // Moved to the same pids (the receiver waits for them to be free).
    started.push(n.master);
    await expectServes(n, client, worker, n.master);
    client.end();
  }, 90000);

  it('dump --tree --leave-running: the original goes on serving and managing its workers', async () => {
    const n = await startNginx();
    const client = await Client.open(n.port);
    const worker = await client.get();
    const d = await tsnap('dump', '--tree', '--leave-running', '--pid', String(n.master), '--dir', join(n.dir, 'img'), '--tcp-established');
    expect(d.code, d.stderr).toBe(0);
    for (const p of [n.master, ...n.workers]) expect(isGone(p)).toBe(false);
    await expectServes(n, client, worker, n.master);
    client.end();
  }, 60000);
});

/**
 * PostgreSQL (when the machine has it): a postmaster and its background
 * processes, running as the postgres user, with SysV shm, a shared buffer
 * pool, a listening unix socket and pipes between them. Dumped as a tree
 * (killed, through a pre-dump chain, or left running), it answers queries
 * afterwards with the rows it had, and takes new ones.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { execFileSync } from 'node:child_process';
import { chownSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running } from './helpers/fixtures.js';
import { tsnap, restoreDetached, useRestoredCleanup } from './helpers/tsnap.js';
import { waitPidsFree, descendantsOf, registerPid } from './helpers/processes.js';
import { startServe, useServeCleanup } from './helpers/serve.js';

useProcessCleanup();
useRestoredCleanup();
useServeCleanup();

/** In PATH, or where Debian's postgresql package puts it (not in PATH). */
function which(cmd: string): string | null {
  try { return execFileSync('sh', ['-c', `command -v ${cmd} || ls /usr/lib/postgresql/*/bin/${cmd} | tail -1`]).toString().trim() || null; } catch { return null; }
}
function hasUser(name: string): boolean {
  try { execFileSync('id', [name], { stdio: 'ignore' }); return true; } catch { return false; }
}
const postgres = which('postgres');
const initdb = which('initdb');
const psql = which('psql');
const missing = !postgres || !initdb || !psql || !hasUser('postgres');
if (missing) console.warn('postgres.test: skipped (needs postgres, initdb and psql in PATH and a postgres user: apt install postgresql)');

let base = '';
let data = '';
const port = 25000 + (process.pid % 1000);

beforeAll(() => {
  if (missing) return;
  base = tmpDir('tsnap-pg-');
  chownSync(base, uidOf('postgres'), gidOf('postgres'));
  data = join(base, 'data');
  execFileSync('setpriv', ['--reuid=postgres', '--regid=postgres', '--init-groups', initdb!, '-D', data, '-A', 'trust', '-U', 'postgres'], { stdio: 'ignore' });
}, 60_000);
afterAll(() => cleanupTmpDirs());

function uidOf(user: string): number { return Number(execFileSync('id', ['-u', user]).toString()); }
function gidOf(user: string): number { return Number(execFileSync('id', ['-g', user]).toString()); }

/** The segment postgres recorded in postmaster.pid ("key shmid" on line 7), removed after each test. */
let segment: string | null = null;
afterEach(() => {
  if (segment) { try { execFileSync('ipcrm', ['-m', segment], { stdio: 'ignore' }); } catch { /* gone */ } }
  segment = null;
});

async function start(listen = ''): Promise<Running> {
  // The last test's postmaster (killed; init reaps it late) must be gone, or the new one believes its lock file.
  try { await waitPidsFree([Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0])], 10_000); } catch { /* no lock file */ }
  const p = await startProcess('setpriv', ['--reuid=postgres', '--regid=postgres', '--init-groups', 'sh', '-c',
    `exec 2>&1; exec ${postgres} -D ${data} -p ${port} -k ${base} -c listen_addresses=${listen} -c logging_collector=off`],
  { readyPattern: /ready to accept connections/, timeoutMs: 30_000 });
  segment = readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[6]?.trim().split(/\s+/)[1] ?? null;
  return p;
}

function sql(q: string): string {
  return execFileSync(psql!, ['-h', base, '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-qAt', '-c', q], { timeout: 20_000 }).toString().trim();
}

/** Waits until the postmaster's background processes are up (they come after "ready"). */
async function children(pid: number, at = 4): Promise<number[]> {
  for (let i = 0; i < 300; i++) {
    const kids = descendantsOf(pid);
    if (kids.length >= at) return kids;
    await new Promise((r) => setTimeout(r, 20));
  }
  return descendantsOf(pid);
}

function uidOfPid(pid: number): number {
  return Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

describe.skipIf(missing)('postgres', () => {
  for (const mode of ['kill', 'chain'] as const) {
    it(`rows written before the dump are there after restore (${mode === 'kill' ? 'dump --tree' : 'pre-dump chain'}), and it takes new ones`, async () => {
      const p = await start();
      sql('create table if not exists t(x int); truncate t; insert into t select generate_series(1, 5000)');
      const kids = await children(p.pid);
      const work = tmpDir('tsnap-pgimg-');
      let dir = join(work, 'img');
      if (mode === 'chain') {
        const pre = await tsnap('pre-dump', '--tree', '--pid', String(p.pid), '--dir', join(work, '1'));
        expect(pre.code, pre.stderr).toBe(0);
        sql('insert into t select generate_series(5001, 7000)');
        dir = join(work, '2');
        const d = await tsnap('dump', '--tree', '--pid', String(p.pid), '--dir', dir, '--parent', join(work, '1'));
        expect(d.code, d.stderr).toBe(0);
      } else {
        const d = await tsnap('dump', '--tree', '--pid', String(p.pid), '--dir', dir);
        expect(d.code, d.stderr).toBe(0);
      }
      await p.exited;
      await waitPidsFree(kids);
      const r = await restoreDetached(dir, join(work, 'pid'));
      expect(r.result.code, r.result.stderr).toBe(0);
      expect(r.pid).toBe(p.pid);
      expect(uidOfPid(r.pid)).toBe(uidOf('postgres'));
      const want = mode === 'chain' ? 7000 : 5000;
      expect(sql('select count(*), sum(x) from t')).toBe(`${want}|${want * (want + 1) / 2}`);
      sql('insert into t values (0)');
      expect(sql('select count(*) from t')).toBe(String(want + 1));
      // Checkpoints go through the restored checkpointer and its shared memory.
      expect(sql('checkpoint; select 1')).toBe('1');
    }, 120_000);
  }

  it('migrate --tree to a tsnap serve --restore: the moved server has the rows and takes new ones', async () => {
    const p = await start();
    sql('create table if not exists t(x int); truncate t; insert into t select generate_series(1, 2000)');
    const kids = await children(p.pid);
    const work = tmpDir('tsnap-pgmig-');
    const srv = await startServe(join(work, 'in'), ['--restore', '--count', '1']);
    const r = await tsnap('migrate', '--tree', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--max-iterations', '3');
    expect(r.code, r.stderr).toBe(0);
    await p.exited;
    // Moved to the same pids (the receiver waits for them to be free).
    for (const pid of [p.pid, ...kids]) registerPid(pid);
    for (let i = 0; i < 500 && !srv.events.some((e) => e.includes('"restored"')); i++) await new Promise((res) => setTimeout(res, 20));
    expect(srv.events.some((e) => e.includes('"restored"')), srv.events.join('\n')).toBe(true);
    expect(sql('select count(*), sum(x) from t')).toBe('2000|2001000');
    sql('insert into t values (0)');
    expect(sql('select count(*) from t')).toBe('2001');
  }, 180_000);

  it('with a client connected over TCP (dump --tree --tcp-established): the same session goes on after restore', async () => {
    const p = await start('127.0.0.1');
    sql('create table if not exists t(x int); truncate t; insert into t select generate_series(1, 100)');
    // One psql session over TCP that lives across the dump: its backend is a child of the postmaster.
    const client = await startPython(`
import subprocess, sys
p = subprocess.Popen([${JSON.stringify(psql)}, '-h', '127.0.0.1', '-p', '${port}', '-U', 'postgres', '-d', 'postgres', '-qAt'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
print('READY', flush=True)
for line in sys.stdin:
    p.stdin.write(line); p.stdin.flush()
    print('ANSWER ' + p.stdout.readline().strip(), flush=True)
`);
    const ask = async (q: string) => { const at = client.lines().length; client.writeLine(q); return (await client.waitForLine(/^ANSWER/, 20_000, at)).slice(7); };
    expect(await ask("select 'session ' || pg_backend_pid();")).toMatch(/^session \d+$/);
    const backend = await ask('select pg_backend_pid();');
    expect(await ask('insert into t values (101) returning x;')).toBe('101');
    const kids = await children(p.pid, 5);
    const work = tmpDir('tsnap-pgimg-');
    const d = await tsnap('dump', '--tree', '--tcp-established', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await waitPidsFree(kids);
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    // The same backend answers the same session, and sees what it wrote.
    expect(await ask('select pg_backend_pid();')).toBe(backend);
    expect(await ask('select count(*) from t;')).toBe('101');
    await client.kill();
  }, 120_000);

  it('dump --tree --leave-running: the original goes on answering', async () => {
    const p = await start();
    sql('create table if not exists t(x int); truncate t; insert into t select generate_series(1, 300)');
    await children(p.pid);
    const work = tmpDir('tsnap-pgimg-');
    const d = await tsnap('dump', '--tree', '--leave-running', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code, d.stderr).toBe(0);
    sql('insert into t values (301)');
    expect(sql('select count(*) from t')).toBe('301');
    // Nothing of tsnap is left in it: no tracer, no stop.
    for (const pid of [p.pid, ...descendantsOf(p.pid)]) {
      let st: string;
      try { st = readFileSync(`/proc/${pid}/status`, 'utf8'); } catch { continue; } // a backend that just ended
      expect(/^TracerPid:\s+0$/m.test(st), `${pid} traced`).toBe(true);
      expect(/^State:\s+[tT]/m.test(st), `${pid} stopped`).toBe(false);
      let names: string[];
      try { names = readdirSync(`/proc/${pid}/fd`); } catch { continue; } // ended meanwhile
      const links = names.map((fd) => { try { return readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { return ''; } });
      expect(links.filter((l) => /userfaultfd/.test(l)), `${pid} fds`).toEqual([]);
    }
  }, 120_000);
});

/**
 * PostgreSQL (when the machine has it): a postmaster and its background
 * processes, running as the postgres user, with SysV shm, a shared buffer
 * pool, a listening unix socket and pipes between them. Dumped as a tree
 * and killed, it answers queries afterwards with the rows it had, and
 * takes new ones; a psql session connected over TCP, in the middle of a
 * transaction with a temp table, goes on through leave-running, a pre-dump
 * chain, kill and migrate (test/helpers/scenarios.ts).
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { execFileSync } from 'node:child_process';
import { chownSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running } from './helpers/fixtures.js';
import { tsnap, restoreDetached } from './helpers/tsnap.js';
import { waitPidsFree, descendantsOf, killTree } from './helpers/processes.js';
import { runScenarios } from './helpers/scenarios.js';
import { freePort } from './helpers/ports.js';

useProcessCleanup();

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
let port = 0; // the kernel's choice (helpers/ports.ts)

beforeAll(async () => {
  if (missing) return;
  port = await freePort();
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
/**
 * Its dynamic shared memory (POSIX shm, /dev/shm/PostgreSQL.N) outlives a
 * killed postmaster: what was not there before this file's first test goes
 * after each (another postgres's segments are left alone).
 */
const dsm = () => { try { return readdirSync('/dev/shm').filter((n) => n.startsWith('PostgreSQL.')); } catch { return []; } };
const dsmBefore = new Set(dsm());
afterEach(() => {
  if (segment) { try { execFileSync('ipcrm', ['-m', segment], { stdio: 'ignore' }); } catch { /* gone */ } }
  segment = null;
  for (const n of dsm()) if (!dsmBefore.has(n)) rmSync(join('/dev/shm', n), { force: true });
});

/**
 * Shared buffers are kept small: they are MAP_SHARED anonymous memory, which
 * every pre-copy round of a migration sends whole (its writes cannot be
 * tracked per process: src/dump/delta-selection.ts).
 */
async function start(listen = ''): Promise<Running> {
  // The last test's postmaster (killed; init reaps it late) must be gone, or the new one believes its lock file.
  try { await waitPidsFree([Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0])], 10_000); } catch { /* no lock file */ }
  const p = await startProcess('setpriv', ['--reuid=postgres', '--regid=postgres', '--init-groups', 'sh', '-c',
    `exec 2>&1; exec ${postgres} -D ${data} -p ${port} -k ${base} -c listen_addresses=${listen} -c logging_collector=off -c shared_buffers=16MB`],
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
  it('rows written before the dump are there after restore (dump --tree), and it takes new ones', async () => {
    const p = await start();
    sql('create table if not exists t(x int); truncate t; insert into t select generate_series(1, 5000)');
    const kids = await children(p.pid);
    const work = tmpDir('tsnap-pgimg-');
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--tree', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await waitPidsFree(kids);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.pid).toBe(p.pid);
    expect(uidOfPid(r.pid)).toBe(uidOf('postgres'));
    expect(sql('select count(*), sum(x) from t')).toBe('5000|12502500');
    sql('insert into t values (0)');
    expect(sql('select count(*) from t')).toBe('5001');
    // Checkpoints go through the restored checkpointer and its shared memory.
    expect(sql('checkpoint; select 1')).toBe('1');
  }, 120_000);

  it('a psql session over TCP, with a temp table and an open transaction, goes on through leave-running, a pre-dump chain, kill and migrate (--tree --tcp-established)', async () => {
    const p = await start('127.0.0.1');
    sql('create table if not exists t(x int); truncate t; insert into t select generate_series(1, 1000)');
    await children(p.pid);
    // One psql session over TCP that lives across every scenario: its backend is a child of the postmaster.
    const client = await startPython(`
import os, subprocess, sys
os.closerange(3, 1024)
p = subprocess.Popen([${JSON.stringify(psql)}, '-h', '127.0.0.1', '-p', '${port}', '-U', 'postgres', '-d', 'postgres', '-qAt'], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
print('READY', flush=True)
for line in sys.stdin:
    p.stdin.write(line); p.stdin.flush()
    print('ANSWER ' + p.stdout.readline().strip(), flush=True)
`);
    const ask = async (q: string) => { const at = client.lines().length; client.writeLine(q); return (await client.waitForLine(/^ANSWER/, 20_000, at)).slice(7); };
    const backend = await ask('select pg_backend_pid();');
    expect(await ask("begin; create temp table mine(step text); select 'began';")).toBe('began');
    const xid = await ask('select txid_current();');
    const steps: string[] = [];
    const work = tmpDir('tsnap-pgall-');
    const last = await runScenarios(p, {
      work,
      tree: true,
      check: async (step) => {
        steps.push(step);
        // The same backend, in the same transaction, with its temp table and its uncommitted rows.
        expect(await ask('select pg_backend_pid();'), step).toBe(backend);
        expect(await ask('select txid_current();'), step).toBe(xid);
        expect(await ask(`insert into mine values ('${step}') returning step;`)).toBe(step);
        expect(await ask('select string_agg(step, \',\' order by ctid) from mine;'), step).toBe(steps.join(','));
        expect(await ask(`insert into t values (${1000 + steps.length}) returning x;`)).toBe(String(1000 + steps.length));
        expect(await ask('select count(*) from t;'), step).toBe(String(1000 + steps.length));
        // Another connection (a new backend the restored postmaster forks) sees none of it: it is not committed.
        expect(sql('select count(*), sum(x) from t'), step).toBe('1000|500500');
        expect(uidOfPid(p.pid)).toBe(uidOf('postgres'));
      },
    });
    expect(await ask("commit; select 'committed';")).toBe('committed');
    expect(sql('select count(*) from t')).toBe(String(1000 + steps.length));
    // Checkpoints go through the moved checkpointer and its shared memory.
    expect(sql('checkpoint; select 1')).toBe('1');
    await client.kill();
    await killTree(last);
  }, 180_000);
});

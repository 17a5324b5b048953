/**
 * A real program with a deleted file open: the sqlite3 shell, its default
 * temp store on disk (a temp file it unlinks at once), a transaction open
 * and a temp table spilled to that file, across a dump (kill), a pre-dump
 * chain and a dump that leaves it running. The shell itself says what it
 * sees afterwards.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { readdirSync, readlinkSync, writeFileSync, openSync, closeSync, writeSync, existsSync, readFileSync, constants } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running } from './helpers/fixtures.js';
import { tsnap, restoreDetached, dumpKillRestore, readImage, killPid } from './helpers/tsnap.js';
import { startServe } from './helpers/serve.js';
import { registerPid } from './helpers/processes.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const ROWS = 20000;

/** A transaction with ROWS rows and a temp table of ~2.4 MiB that a 5-page cache must spill. */
async function startSqlite(work: string): Promise<Running> {
  const init = join(work, 'init.sql');
  writeFileSync(init, `
PRAGMA cache_size=5;
CREATE TABLE t(x);
BEGIN;
INSERT INTO t WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c LIMIT ${ROWS}) SELECT i FROM c;
CREATE TEMP TABLE tt AS SELECT x, randomblob(100) AS b FROM t;
SELECT 'READY';
`);
  const p = await startProcess('sqlite3', ['-init', init, '-batch', join(work, 'db')], { env: { SQLITE_TMPDIR: work }, readyPattern: /^READY$/ });
  // The temp store: a file of the work directory, deleted, still open.
  const fds = readdirSync(`/proc/${p.pid}/fd`).map((fd) => { try { return readlinkSync(`/proc/${p.pid}/fd/${fd}`); } catch { return ''; } });
  expect(fds.some((l) => l.startsWith(join(work, 'etilqs_')) && l.endsWith(' (deleted)')), fds.join(' ')).toBe(true);
  return p;
}

type Shell = { writeLine(s: string): void; waitForLine(re: RegExp, timeoutMs?: number, from?: number): Promise<string> };

/** The temp table and the open transaction, as the shell sees them; then the commit. */
async function finish(s: Shell, extra = 0): Promise<string[]> {
  s.writeLine("SELECT 'TEMP', count(*), sum(x), sum(length(b)) FROM tt;");
  const temp = await s.waitForLine(/^TEMP\|/);
  s.writeLine('INSERT INTO t VALUES (-1);');
  s.writeLine('COMMIT;');
  s.writeLine("SELECT 'COMMITTED', count(*) FROM t;");
  const done = await s.waitForLine(/^COMMITTED\|/);
  const n = ROWS + extra;
  expect(temp).toBe(`TEMP|${n}|${(ROWS * (ROWS + 1)) / 2 + extra * 7}|${n * 100}`);
  expect(done).toBe(`COMMITTED|${ROWS + 1}`);
  return [temp, done];
}

describe('sqlite3 with its temp store in a deleted file', () => {
  it('survives dump and restore: the temp table and the open transaction are intact', async () => {
    const work = tmpDir('tsnap-sqlite-');
    const p = await startSqlite(work);
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toMatch(/restore check/);
    // The temp table did spill: its pages are in the ghost's data.
    const ghost = readImage(join(work, 'img')).process!.fds.find((f) => f.path?.startsWith(join(work, 'etilqs_')))!.ghost!;
    expect(ghost.extents!.reduce((n, e) => n + e.data.length, 0)).toBeGreaterThan(256 << 10);
    await finish(r);
    // Nothing of the ghost is left: the temp file is deleted again.
    expect(readdirSync(work).filter((f) => f.startsWith('etilqs_'))).toEqual([]);
  });

  it('survives a pre-dump chain, with the temp table growing between the rounds', async () => {
    const work = tmpDir('tsnap-sqlite-');
    const p = await startSqlite(work);
    const ok = async (...a: string[]) => { const x = await tsnap(...a); expect(x.code, x.stderr).toBe(0); };
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'));
    const mark = p.lines().length;
    p.writeLine("INSERT INTO tt SELECT 7, randomblob(100) FROM t LIMIT 500; SELECT 'GREW';");
    await p.waitForLine(/^GREW$/, 5000, mark);
    await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--parent', join(work, '1'));
    await ok('dump', '--pid', String(p.pid), '--dir', join(work, '3'), '--parent', join(work, '2'));
    await p.exited;
    const r = await restoreDetached(join(work, '3'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    await finish(r, 500);
  });

  it('left running, the shell goes on as if nothing happened', async () => {
    const work = tmpDir('tsnap-sqlite-');
    const p = await startSqlite(work);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    const from = p.lines().length;
    await finish({ writeLine: (l) => p.writeLine(l), waitForLine: (re, t) => p.waitForLine(re, t, from) });
  });
});

describe('sqlite3 driven through a named FIFO', () => {
  it('migrates to a tsnap serve --restore: its FIFO stdin is reopened by path, the temp table and the transaction are intact', async () => {
    const work = tmpDir('tsnap-sqlite-');
    const init = join(work, 'init.sql');
    writeFileSync(init, `
PRAGMA cache_size=5;
CREATE TABLE t(x);
BEGIN;
INSERT INTO t WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c LIMIT ${ROWS}) SELECT i FROM c;
CREATE TEMP TABLE tt AS SELECT x, randomblob(100) AS b FROM t;
SELECT 'READY';
`);
    const fifo = join(work, 'in');
    const out = join(work, 'out');
    execFileSync('mkfifo', [fifo]);
    // The test keeps a writer open: the shell never sees EOF, before or after the move.
    const writer = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
    try {
      const p = await startProcess('sh', ['-c', `echo STARTED; exec sqlite3 -init ${init} -batch ${join(work, 'db')} < ${fifo} > ${out} 2>&1`], { env: { SQLITE_TMPDIR: work }, readyPattern: /^STARTED$/, stdin: 'ignore' });
      const lines = () => (existsSync(out) ? readFileSync(out, 'utf8').split('\n') : []);
      const waitOut = async (re: RegExp) => {
        for (let i = 0; i < 1000; i++) { const l = lines().find((x) => re.test(x)); if (l) return l; await new Promise((r) => setTimeout(r, 20)); }
        throw new Error(`no ${re} in ${lines().join('|')}`);
      };
      await waitOut(/^READY$/);
      const srv = await startServe(join(work, 'recv'), ['--restore', '--count', '1']);
      const m = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--max-iterations', '2');
      expect(m.code, m.stderr).toBe(0);
      await p.exited;
      for (let i = 0; i < 1500 && !srv.events.some((e) => e.includes('"restored"')); i++) await new Promise((r) => setTimeout(r, 20));
      expect(srv.events.some((e) => e.includes('"restored"')), srv.events.join('\n')).toBe(true);
      registerPid(p.pid);
      writeSync(writer, "SELECT 'TEMP', count(*), sum(x), sum(length(b)) FROM tt;\nINSERT INTO t VALUES (-1);\nCOMMIT;\nSELECT 'COMMITTED', count(*) FROM t;\n");
      expect(await waitOut(/^TEMP\|/)).toBe(`TEMP|${ROWS}|${(ROWS * (ROWS + 1)) / 2}|${ROWS * 100}`);
      expect(await waitOut(/^COMMITTED\|/)).toBe(`COMMITTED|${ROWS + 1}`);
      await killPid(p.pid);
    } finally {
      closeSync(writer);
    }
  }, 120_000);
});

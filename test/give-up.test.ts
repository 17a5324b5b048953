/**
 * The commands that give up what an image holds on the host:
 * `tsnap release-locks` (an image taken with --tcp-established that will
 * never be restored gives its connections' lock rules up; the peer then
 * learns at once that the connection is over) and `tsnap untrack --dir`
 * (its tree case is in tree.test.ts).
 */
import { describe, it, expect, afterAll } from 'vitest';
import { createConnection } from 'node:net';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap } from './helpers/tsnap.js';
import { lockRulesOf } from './helpers/lock-rules.js';
import { eventually } from './helpers/eventually.js';
import { ExitCode } from '../src/errors.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const haveIptables = spawnSync('iptables-restore', ['--version']).status === 0;

describe('release-locks, untrack --dir', () => {
  it.skipIf(!haveIptables)('deletes the lock rules of an image\'s connection, which the peer then sees reset; a second run finds none left', async () => {
    const work = tmpDir('tsnap-release-');
    const p = await startPython(`
import os, socket, time
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
os.closerange(3, l.fileno())
print('READY port=%d' % l.getsockname()[1], flush=True)
c, _ = l.accept()
l.close()
time.sleep(1000)
`);
    const port = Number(p.readyInfo.port);
    const client = createConnection(port, '127.0.0.1');
    await new Promise((res) => client.once('connect', res));
    let clientError = '';
    client.on('error', (e: NodeJS.ErrnoException) => { clientError = e.code ?? e.message; });
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tcp-established');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    expect(lockRulesOf(port).length).toBe(2);

    const r = await tsnap('release-locks', '--dir', dir);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('released 1 of 1 locked connection');
    expect(r.stdout).toContain(`127.0.0.1:${port} <-> 127.0.0.1:${client.localPort}: 2 rules deleted`);
    expect(lockRulesOf(port)).toEqual([]);
    // No socket answers for the connection any more: the client's next segment gets a RST.
    client.write('anyone?\n');
    await eventually(async () => clientError, (e) => e === 'ECONNRESET', 5000, 'the client sees its connection reset');

    const again = await tsnap('release-locks', '--dir', dir);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain('released 0 of 1 locked connection');
    expect(again.stdout).toContain('no rule left');
    client.destroy();
  });

  it('an image without connections says so (and untrack --dir, that it is not a pre-dump); a directory that is not an image is a clear error', async () => {
    const work = tmpDir('tsnap-release-');
    const p = await startPython(`
import os, time
os.closerange(3, 1 << 16)
print('READY', flush=True)
time.sleep(1000)
`);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    const r = await tsnap('release-locks', '--dir', dir);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(`${dir} holds no locked TCP connection`);
    const un = await tsnap('untrack', '--dir', dir);
    expect(un.code).toBe(ExitCode.usage);
    expect(un.stderr.trim()).toBe(`tsnap: ${dir} is not a pre-dump: it holds no tracking`);
    const bad = await tsnap('release-locks', '--dir', work);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr.trim().split('\n').length).toBe(1);
    expect(bad.stderr).toContain('not a tsnap image');
  });
});

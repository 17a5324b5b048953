/**
 * Dump sessions own what they hold. Two library dumps running at once in
 * one node process, each of a process with an established TCP connection:
 * the one that finishes first (left running: its connection leaves repair
 * mode) must not take the other's connection out of repair mode while that
 * one is still frozen, or its kill would close the connection in front of
 * the peer (a FIN) and the restored process could not go on with it.
 */
import { describe, it, expect, afterAll, afterEach } from 'vitest';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running } from './helpers/fixtures.js';
import { restoreDetached, useRestoredCleanup } from './helpers/tsnap.js';
import { tracerFor, isGone } from './helpers/processes.js';
import { dump } from '../src/dump/dump.js';
import { Guardian } from '../src/sys/guardian.js';

useProcessCleanup();
useRestoredCleanup();
afterAll(() => cleanupTmpDirs());
afterEach(async () => {
  // The in-process dumps' guardian: let it go the way tsnap's exit lets it go.
  const g = tracerFor(process.pid);
  Guardian.shutdown();
  for (let i = 0; i < 500 && g !== process.pid && !isGone(g); i++) await new Promise((res) => setTimeout(res, 10));
});

const SERVER = `
import os, socket, sys
for fd in range(3, 256):
    try: os.close(fd)
    except OSError: pass
l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()
print('READY port=%d' % l.getsockname()[1], flush=True)
c, _ = l.accept()
l.close()
n = 0
for cmd in sys.stdin:
    if cmd.startswith('serve'):
        line = b''
        while not line.endswith(b'\\n'):
            line += c.recv(1)
        n += 1
        c.sendall(b'echo:' + line.strip() + b' n=%d\\n' % n)
`;

interface Peer { client: Socket; next: (n: number) => Promise<string | undefined>; ended: () => boolean }

async function serverWithClient(): Promise<{ p: Running; peer: Peer }> {
  const p = await startProcess('python3', ['-u', '-c', SERVER]);
  const client = createConnection(Number(p.readyInfo.port), '127.0.0.1');
  await new Promise((res) => client.once('connect', res));
  const got: string[] = [];
  let buf = '';
  let ended = false;
  client.on('data', (d) => { buf += d; const parts = buf.split('\n'); buf = parts.pop()!; got.push(...parts); });
  client.on('end', () => { ended = true; });
  client.on('error', () => { ended = true; });
  const next = async (n: number) => { for (let i = 0; i < 500 && got.length < n; i++) await new Promise((res) => setTimeout(res, 10)); return got[n - 1]; };
  return { p, peer: { client, next, ended: () => ended } };
}

describe('dump sessions', () => {
  it('two concurrent library dumps with TCP connections do not end each other\'s repair mode', async () => {
    const work = tmpDir('tsnap-session-');
    const a = await serverWithClient();
    const b = await serverWithClient();
    a.peer.client.write('a1\n');
    a.p.writeLine('serve');
    expect(await a.peer.next(1)).toBe('echo:a1 n=1');
    b.peer.client.write('b1\n');
    b.p.writeLine('serve');
    expect(await b.peer.next(1)).toBe('echo:b1 n=1');
    b.peer.client.write('b2\n'); // waits unread in b's receive queue, across the dump

    // b is held frozen, its connection in repair mode, until a's dump (left
    // running) has ended entirely; then b's dump goes on and kills b.
    let aDone!: () => void;
    const aEnded = new Promise<void>((res) => { aDone = res; });
    const dumpB = dump({ pid: b.p.pid, dir: join(work, 'b'), tcpEstablished: true, cow: false, onLayout: () => aEnded });
    const dumpA = dump({ pid: a.p.pid, dir: join(work, 'a'), tcpEstablished: true, leaveRunning: true, cow: false }).finally(aDone);
    const [ra, rb] = await Promise.all([dumpA, dumpB]);
    expect(ra.killed).toBe(false);
    expect(rb.killed).toBe(true);
    await b.p.exited;

    // a runs on, its connection out of repair mode.
    a.peer.client.write('a2\n');
    a.p.writeLine('serve');
    expect(await a.peer.next(2)).toBe('echo:a2 n=2');
    // b died with its connection in repair mode: its peer saw nothing, and
    // the restored b goes on where it stopped.
    expect(b.peer.ended()).toBe(false);
    const r = await restoreDetached(join(work, 'b'), join(work, 'b.pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('serve');
    expect(await b.peer.next(2)).toBe('echo:b2 n=2');
    b.peer.client.write('b3\n');
    r.writeLine('serve');
    expect(await b.peer.next(3)).toBe('echo:b3 n=3');
    expect(b.peer.ended()).toBe(false);
    a.peer.client.destroy();
    b.peer.client.destroy();
  });
});

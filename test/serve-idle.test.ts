/**
 * A sender that goes silent mid-migration without closing its connection
 * (its host died, a partition: no FIN, no RST) used to hold `tsnap serve`
 * forever: the one migration slot (every later sender queued behind it)
 * and, with --restore, the process being built, stopped. serve now
 * abandons such a migration after --idle-timeout (found by the hostile
 * client sweep of session 25).
 */
import { describe, it, expect, afterAll } from 'vitest';
import { connect, type Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { tmpDir, cleanupTmpDirs, useProcessCleanup } from './helpers/fixtures.js';
import { startServe } from './helpers/serve.js';
import { isGone } from './helpers/processes.js';
import { eventually } from './helpers/eventually.js';
import { FrameReader, Msg, WIRE_MAGIC, WIRE_VERSION, encodeDoc, decodeDoc, send, type Frame } from '../src/migrate/wire.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

async function peer(port: number): Promise<{ sock: Socket; reader: FrameReader }> {
  const sock = connect({ host: '127.0.0.1', port });
  sock.on('error', () => {});
  await new Promise((r) => sock.once('connect', r));
  return { sock, reader: new FrameReader(sock) };
}

const hello = (pid: number) => encodeDoc(Msg.Hello, { magic: WIRE_MAGIC, version: WIRE_VERSION, token: 'sesame', pid, tool: 'test' });

/** The next frame, or 'none' when nothing came within `ms` (a bound on a wait, not on tsnap's speed). */
function within(reader: FrameReader, ms: number): Promise<Frame | null | 'none'> {
  return Promise.race([reader.next(), new Promise<'none'>((r) => setTimeout(() => r('none'), ms))]);
}

describe('tsnap serve and a sender gone silent', () => {
  it('abandons the migration after --idle-timeout: one-line ERROR, its directory and half-built process gone, the next sender served', async () => {
    const work = tmpDir('tsnap-idle-');
    const inDir = join(work, 'in');
    const srv = await startServe(inDir, ['--restore', '--new-pid', '--idle-timeout', '1']);
    const a = await peer(srv.port);
    await send(a.sock, hello(4242));
    const ok = await a.reader.next();
    expect(ok?.type).toBe(Msg.HelloOk);
    const dir = decodeDoc<{ dir: string }>(ok!).dir;
    // A round begins and its layout arrives: serve starts building the process. Then nothing more.
    await send(a.sock, encodeDoc(Msg.IterBegin, { name: '1' }));
    await send(a.sock, encodeDoc(Msg.Layout, { vmas: [], zero: [], incremental: false }));
    const building = await eventually(() => srv.events.find((l) => l.includes('"building"')), (l) => l !== undefined, 30_000, 'serve building the process');
    const builtPid = (JSON.parse(building!) as { pid: number }).pid;
    // A second sender meanwhile: it waits for its turn behind the silent one.
    const b = await peer(srv.port);
    await send(b.sock, hello(4243));
    // Without the limit the silent sender is waited for forever: 20 s stands for "ever".
    const told = await within(a.reader, 20_000);
    expect(told, 'an answer to the silent sender').not.toBe('none');
    expect((told as Frame).type).toBe(Msg.Error);
    const msg = decodeDoc<{ message: string }>(told as Frame).message;
    expect(msg).toBe('the sender of process 4242 sent nothing for 1 s; the migration was abandoned (serve --idle-timeout)');
    const next = await within(b.reader, 20_000);
    expect(next === 'none' ? 'none' : next?.type, 'the next sender is served').toBe(Msg.HelloOk);
    await eventually(() => isGone(builtPid), (g) => g, 15_000, `the half-built process ${builtPid} ended`);
    expect(existsSync(dir), 'the abandoned migration\'s directory').toBe(false);
    expect(srv.events.join('\n')).not.toMatch(/\n\s+at /);
    expect(srv.proc.exitCode, 'serve goes on').toBe(null);
    a.sock.destroy();
    b.sock.destroy();
  });
});

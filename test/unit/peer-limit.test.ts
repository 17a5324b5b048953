/**
 * PeerLimit (src/migrate/peer-limit.ts) over real loopback connections: a
 * window that moves is progress, one that stays shut is not; time in which
 * the sender waits for nothing is no one's silence; after COMMIT it warns
 * and never gives up on its own.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { PeerLimit } from '../../src/migrate/peer-limit.js';
import { TsnapError } from '../../src/errors.js';
import { setsockopt } from '../../src/sys/index.js';

const open: (Server | Socket)[] = [];
afterEach(() => {
  for (const s of open.splice(0)) (s as Socket).destroy?.() ?? (s as Server).close();
});

/** A connected pair; the accepting end with a small receive buffer, paused (it reads nothing unless told). */
async function pair(): Promise<{ client: Socket; server: Socket }> {
  let got!: (s: Socket) => void;
  const accepted = new Promise<Socket>((r) => { got = r; });
  const srv = createServer((s) => {
    const fd = (s as unknown as { _handle: { fd: number } })._handle.fd;
    setsockopt(fd, 1, 8 /* SO_RCVBUF */, 16 << 10);
    s.pause();
    got(s);
  });
  open.push(srv);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const client = connect((srv.address() as { port: number }).port, '127.0.0.1');
  client.on('error', () => {});
  await new Promise((r) => client.once('connect', r));
  const server = await accepted;
  server.on('error', () => {});
  open.push(client, server);
  return { client, server };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function watch(client: Socket, limitMs: number, checkAbort: () => void = () => {}) {
  const warnings: string[] = [];
  const w = new PeerLimit(client, { limitMs, peer: 'peer:1', pid: 4242, checkAbort, warn: (m) => warnings.push(m) });
  return { w, warnings };
}

/** Writes more than every buffer between the two ends holds. */
function flood(client: Socket): void {
  for (let i = 0; i < 48; i++) client.write(Buffer.alloc(1 << 20));
}

describe('PeerLimit', () => {
  it('a window that stays shut is given up on after the limit, the socket destroyed', async () => {
    const { client } = await pair();
    const { w } = watch(client, 300);
    w.guard();
    flood(client);
    const t = Date.now();
    await new Promise((r) => client.once('close', r));
    expect(Date.now() - t).toBeGreaterThanOrEqual(250);
    expect(w.fired).toBeInstanceOf(TsnapError);
    expect(w.fired!.message).toBe('the receiver at peer:1 made no progress for 0.3 s (--peer-timeout) while process 4242 was frozen, before the commit; tsnap gave up on it');
    expect(w.mayHaveCommitted).toBe(false);
    w.stop();
  });

  it('a slow reader whose window moves is progress, however long the writing takes', async () => {
    const { client, server } = await pair();
    const { w } = watch(client, 400);
    w.guard();
    flood(client);
    // 16 KiB every 50 ms: ~0.3 MB/s, the writing lasts far longer than the limit.
    const until = Date.now() + 2000;
    let read = 0;
    while (Date.now() < until) {
      await sleep(50);
      read += server.read(16 << 10)?.length ?? 0;
    }
    expect(read).toBeGreaterThan(0);
    expect(client.writableLength).toBeGreaterThan(0);
    expect(w.fired).toBeNull();
    expect(client.destroyed).toBe(false);
    w.stop();
  });

  it('time the sender waits for nothing (its own work) is not the peer\'s silence', async () => {
    const { client } = await pair();
    const { w } = watch(client, 200);
    w.guard();
    await sleep(700);
    expect(w.fired).toBeNull();
    // Waiting for an answer that does not come is.
    await expect(w.waiting(new Promise((_, reject) => client.once('close', () => reject(new Error('closed')))))).rejects.toThrow('closed');
    expect(w.fired!.message).toMatch(/made no progress for 0\.2 s/);
    w.stop();
  });

  it('bytes arriving while the sender waits are progress', async () => {
    const { client, server } = await pair();
    client.on('data', () => {});
    const { w } = watch(client, 300);
    w.guard();
    // Silent at most 100 ms at a time for 1.2 s, and not at the end.
    const answer = w.waiting(sleep(1000));
    for (let i = 0; i < 12; i++) { server.write('x'); await sleep(100); }
    await answer;
    expect(w.fired).toBeNull();
    w.stop();
  });

  it('after COMMIT has left: one warning, the connection kept, never given up on its own', async () => {
    const { client } = await pair();
    const { w, warnings } = watch(client, 200);
    w.guard();
    client.write(Buffer.from('COMMIT'));
    w.commitSent();
    const answer = w.waiting(sleep(1200));
    await answer;
    expect(w.fired).toBeNull();
    expect(client.destroyed).toBe(false);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^the receiver at peer:1 has not answered COMMIT for 0\.2 s; process 4242 stays frozen here/);
    expect(w.mayHaveCommitted).toBe(true);
    w.stop();
  });

  it('COMMIT stuck in user space behind a shut window: still given up on (the receiver cannot have it)', async () => {
    const { client } = await pair();
    const { w, warnings } = watch(client, 300);
    w.guard();
    flood(client);
    client.write(Buffer.from('COMMIT'));
    w.commitSent();
    await new Promise((r) => client.once('close', r));
    expect(w.fired!.message).toMatch(/before the commit; tsnap gave up on it$/);
    expect(w.mayHaveCommitted).toBe(false);
    expect(warnings).toEqual([]);
    w.stop();
  });

  it('a signal during a network wait ends it with the interruption', async () => {
    const { client } = await pair();
    let abort = false;
    const stop = new TsnapError('interrupted', 'interrupted by SIGTERM', undefined, 143);
    const { w } = watch(client, 0, () => { if (abort) throw stop; });
    w.guard();
    const waited = w.waiting(new Promise((_, reject) => client.once('close', () => reject(new Error('closed')))));
    await sleep(300);
    expect(client.destroyed).toBe(false); // no limit: the wait goes on
    abort = true;
    await expect(waited).rejects.toThrow('closed');
    expect(w.fired).toBe(stop);
    w.stop();
  });
});

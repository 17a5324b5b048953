/** FrameReader.idleAfter: only time spent waiting for the peer counts (migrate/wire.ts). */
import { describe, it, expect } from 'vitest';
import { createServer, connect, type Socket } from 'node:net';
import { FrameReader, Msg, encodeDoc } from '../../src/migrate/wire.js';
import { TsnapError } from '../../src/errors.js';

async function pair(): Promise<{ a: Socket; b: Socket; close: () => void }> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  const accepted = new Promise<Socket>((r) => srv.once('connection', r));
  const a = connect({ host: '127.0.0.1', port });
  await new Promise((r) => a.once('connect', r));
  const b = await accepted;
  a.on('error', () => {});
  b.on('error', () => {});
  return { a, b, close: () => { a.destroy(); b.destroy(); srv.close(); } };
}

const nap = (ms: number) => new Promise((r) => setTimeout(r, ms));
const gone = () => new TsnapError('targetFailed', 'idle');

describe('FrameReader idle limit', () => {
  it('a peer that keeps sending, even a frame byte by byte, is not idle; one that stops is, once waited for', async () => {
    const { a, b, close } = await pair();
    try {
      const reader = new FrameReader(b);
      // Gaps 25 times shorter than the limit: a loaded machine's stalls stay well inside it.
      reader.idleAfter(500, gone);
      const frame = Buffer.concat(encodeDoc(Msg.IterBegin, { name: 'x'.repeat(60) }));
      // One byte every 20 ms: the frame takes longer than the limit, but bytes keep coming.
      const got = reader.next();
      for (const byte of frame) { a.write(Buffer.from([byte])); await nap(20); }
      expect((await got)?.type).toBe(Msg.IterBegin);
      // This side busy for longer than the limit (not waiting): the peer is not idle for it.
      a.write(Buffer.concat(encodeDoc(Msg.IterEnd, {})));
      await nap(1200);
      expect((await reader.next())?.type).toBe(Msg.IterEnd);
      // Waiting, and nothing comes.
      const t = Date.now();
      await expect(reader.next()).rejects.toThrow('idle');
      expect(Date.now() - t).toBeGreaterThanOrEqual(490);
      // Stopped: waits as long as it takes.
      reader.stopIdle();
    } finally {
      close();
    }
  });

  it('stopIdle() before the limit: no refusal', async () => {
    const { a, b, close } = await pair();
    try {
      const reader = new FrameReader(b);
      reader.idleAfter(100, gone);
      reader.stopIdle();
      const got = reader.next();
      await nap(300);
      a.write(Buffer.concat(encodeDoc(Msg.IterEnd, {})));
      expect((await got)?.type).toBe(Msg.IterEnd);
    } finally {
      close();
    }
  });
});

/** The sender's wait for READY before the final freeze: it comes, a signal ends it, a silent receiver fails it. */
import { describe, it, expect, afterEach } from 'vitest';
import { createServer, connect, Socket, type Server } from 'node:net';
import { FrameReader, Msg, encodeDoc, send } from '../../src/migrate/wire.js';
import { receiverReady } from '../../src/migrate/receiver-ready.js';
import { getSched, setSched, SCHED_OTHER } from '../../src/sys/sched.js';
import { WindowPriority } from '../../src/migrate/window-priority.js';

const open: (Server | Socket)[] = [];
afterEach(() => { for (const x of open.splice(0)) x instanceof Socket ? x.destroy() : x.close(); });

async function pair(): Promise<{ sender: Socket; receiver: Socket }> {
  return new Promise((resolve) => {
    const srv = createServer((receiver) => { open.push(receiver); resolve({ sender, receiver }); });
    open.push(srv);
    let sender: Socket;
    srv.listen(0, '127.0.0.1', () => {
      sender = connect((srv.address() as { port: number }).port, '127.0.0.1');
      open.push(sender);
    });
  });
}

describe('receiverReady', () => {
  it('returns once READY arrives', async () => {
    const { sender, receiver } = await pair();
    const waiting = receiverReady(new FrameReader(sender), () => {});
    await send(receiver, encodeDoc(Msg.Ready, {}));
    await expect(waiting).resolves.toBeUndefined();
  });

  it('an ERROR instead says the receiver refused', async () => {
    const { sender, receiver } = await pair();
    const waiting = receiverReady(new FrameReader(sender), () => {});
    await send(receiver, encodeDoc(Msg.Error, { code: 'failed', message: 'disk full' }));
    await expect(waiting).rejects.toThrow(/refused: disk full/);
  });

  it('a signal (the abort check throwing) ends the wait', async () => {
    const { sender } = await pair();
    let aborted = false;
    const waiting = receiverReady(new FrameReader(sender), () => { if (aborted) throw new Error('interrupted by SIGINT'); });
    aborted = true;
    await expect(waiting).rejects.toThrow(/SIGINT/);
  });

  it('a receiver silent past the limit fails the migration, naming the wait', async () => {
    const { sender } = await pair();
    await expect(receiverReady(new FrameReader(sender), () => {}, 60)).rejects.toThrow(/did not get ready for the final round/);
  });
});

describe('WindowPriority', () => {
  it('raises a thread to SCHED_FIFO and puts its class back', () => {
    const before = getSched(process.pid)!;
    const prio = new WindowPriority().raise([process.pid]);
    const during = getSched(process.pid)!;
    prio.restore();
    expect(getSched(process.pid)).toEqual(before);
    // Root here has CAP_SYS_NICE; elsewhere the thread simply stays as it was.
    if (during.policy !== before.policy) expect(during.policy & 0xff).toBe(1);
    if ((before.policy & 0xff) !== SCHED_OTHER) setSched(process.pid, { policy: SCHED_OTHER, priority: 0 });
  });
});

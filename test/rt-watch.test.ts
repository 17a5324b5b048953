/**
 * The real-time class's watchdog (src/sys/rt-watch.ts): a window's raised
 * threads get their own class back once it has lasted its bound, from a
 * native thread, while the JavaScript that raised them cannot run (here:
 * it spins; in the field: higher real-time priorities hold it).
 */
import { describe, it, expect, afterEach } from 'vitest';
import { compileC, startProcess, useProcessCleanup } from './helpers/fixtures.js';
import { WindowPriority } from '../src/migrate/window-priority.js';
import { getSched, SCHED_FIFO, SCHED_OTHER, SCHED_RESET_ON_FORK } from '../src/sys/sched.js';
import { rtStall } from '../src/sys/rt-watch.js';

useProcessCleanup();
const policyOf = (tid: number) => getSched(tid)!.policy & ~SCHED_RESET_ON_FORK;
/** Blocks this thread (the event loop with it) for `ms`. */
const spin = (ms: number) => { const end = Date.now() + ms; while (Date.now() < end) { /* busy */ } };

describe('the real-time watchdog', () => {
  const bound = process.env.TSNAP_RT_BOUND_MS;
  afterEach(() => { if (bound === undefined) delete process.env.TSNAP_RT_BOUND_MS; else process.env.TSNAP_RT_BOUND_MS = bound; });

  it('gives a stalled window\'s threads their class back after the bound, raises nothing more in it, and arms afresh for the next window', async () => {
    process.env.TSNAP_RT_BOUND_MS = '150';
    const a = await startProcess(await compileC('counter'), []);
    const b = await startProcess(await compileC('counter'), []);
    const prio = new WindowPriority().raise([a.pid]);
    expect(prio.has(a.pid)).toBe(true);
    expect(policyOf(a.pid)).toBe(SCHED_FIFO);
    // JavaScript cannot put it back while it spins: only the watchdog's thread can.
    spin(400);
    expect(policyOf(a.pid)).toBe(SCHED_OTHER);
    const stall = rtStall();
    expect(stall).not.toBeNull();
    expect(stall!.threads).toBe(1);
    expect(stall!.afterMs).toBeGreaterThanOrEqual(140);
    // Stalled: the rest of this window stays in the normal class.
    prio.raise([b.pid]);
    expect(prio.has(b.pid)).toBe(false);
    expect(policyOf(b.pid)).toBe(SCHED_OTHER);
    prio.restore();
    expect(policyOf(a.pid)).toBe(SCHED_OTHER);
    expect(rtStall()?.threads).toBe(1);

    // The next window is raised again and, put back in time, leaves no stall.
    process.env.TSNAP_RT_BOUND_MS = '2000';
    const next = new WindowPriority().raise([a.pid, b.pid]);
    expect(policyOf(a.pid)).toBe(SCHED_FIFO);
    expect(policyOf(b.pid)).toBe(SCHED_FIFO);
    await new Promise((r) => setTimeout(r, 100));
    next.restore();
    expect(policyOf(a.pid)).toBe(SCHED_OTHER);
    expect(policyOf(b.pid)).toBe(SCHED_OTHER);
    expect(rtStall()).toBeNull();
    // Disarmed: nothing happens to them past the old bound either.
    spin(200);
    expect(rtStall()).toBeNull();
  });

  it('one window over several WindowPriority objects: the bound runs from the first raise to the last put back', async () => {
    process.env.TSNAP_RT_BOUND_MS = '200';
    const a = await startProcess(await compileC('counter'), []);
    const b = await startProcess(await compileC('counter'), []);
    const one = new WindowPriority().raise([a.pid]);
    const two = new WindowPriority().raise([b.pid]);
    one.restore();
    expect(policyOf(a.pid)).toBe(SCHED_OTHER);
    expect(policyOf(b.pid)).toBe(SCHED_FIFO);
    spin(350);
    // b's window was still open: the watchdog gave it back.
    expect(policyOf(b.pid)).toBe(SCHED_OTHER);
    two.restore();
    expect(rtStall()?.threads).toBe(1);
  });
});

/**
 * The real-time class's watchdog (src/sys/tsnap-rtwatch.c, built into
 * dist/native/libtsnap-rtwatch.so): a native thread in the normal class
 * that gives every thread a window raised to SCHED_FIFO its own class back
 * once the window has lasted TSNAP_RT_BOUND_MS (1000 ms; the windows are
 * 10-150 ms), even while the raised JavaScript thread gets no CPU at all
 * (higher real-time priorities hold it; the C file says why that happens).
 *
 * A window is from the first thread raised to the last one put back, over
 * every WindowPriority of the process. No watchdog (the library not built,
 * no thread): nothing is raised.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { koffi } from './koffi.js';
import type { SchedClass } from './sched.js';

interface Lib {
  start(): number;
  arm(boundMs: number): void;
  disarm(): void;
  add(tid: number, policy: number, priority: number): number;
  forget(tid: number): void;
  fired(): number;
  firedAt(): number | bigint;
  /**
   * The library itself, held for the life of the process: its thread runs
   * its code until the process ends (it is also linked -z nodelete, so that
   * no unload at the environment's teardown can pull that code away).
   */
  so: unknown;
}

let lib: Lib | null | undefined;

function load(): Lib | null {
  if (lib !== undefined) return lib;
  lib = null;
  // dist/src/sys/ beside dist/native/; src/sys/ (the tests) two levels under it.
  const path = ['../../native/libtsnap-rtwatch.so', '../../dist/native/libtsnap-rtwatch.so'].map((rel) => fileURLToPath(new URL(rel, import.meta.url))).find(existsSync);
  if (!path) return lib;
  try {
    const so = koffi.load(path);
    const f = (decl: string) => so.func(decl) as never;
    const l: Lib = {
      start: f('int tsnap_rtwatch_start(void)'),
      arm: f('void tsnap_rtwatch_arm(int64_t bound_ms)'),
      disarm: f('void tsnap_rtwatch_disarm(void)'),
      add: f('int tsnap_rtwatch_add(int32_t tid, int32_t policy, int32_t priority)'),
      forget: f('void tsnap_rtwatch_forget(int32_t tid)'),
      fired: f('int32_t tsnap_rtwatch_fired(void)'),
      firedAt: f('int64_t tsnap_rtwatch_fired_at(void)'),
      so,
    };
    if (l.start() === 0) lib = l;
  } catch { /* no watchdog: nothing is raised */ }
  return lib;
}

function boundMs(): number {
  const v = Number(process.env.TSNAP_RT_BOUND_MS);
  return Number.isFinite(v) && v > 0 ? v : 1000;
}

/** The threads of the current window that the watchdog would give back. */
const watched = new Set<number>();
let armedAt = 0n;

/** What the last window's watchdog did, once that window is over (null: it did not fire). */
export interface RtStall {
  /** How long after the window began it fired (ms). */
  afterMs: number;
  /** How many threads it gave back their class (0: all had been put back already). */
  threads: number;
}
let lastStall: RtStall | null = null;

/** Whether a thread may be raised now: the watchdog runs, and this window's has not fired. */
export function rtWatchReady(): boolean {
  const l = load();
  return !!l && (watched.size === 0 || l.fired() === 0);
}

/**
 * `tid` is to be raised; `was` is its class to give back. The first one of
 * a window arms the bound. False when the watchdog cannot take it (no
 * library, every slot taken): then it must not be raised.
 */
export function rtWatchAdd(tid: number, was: SchedClass): boolean {
  const l = load();
  if (!l) return false;
  if (watched.has(tid)) return true;
  if (watched.size === 0) {
    l.arm(boundMs());
    armedAt = process.hrtime.bigint();
    lastStall = null;
  }
  if (l.add(tid, was.policy, was.priority) !== 0) {
    if (watched.size === 0) l.disarm();
    return false;
  }
  watched.add(tid);
  return true;
}

/** `tid` got its class back (or is gone). The last one of a window disarms the bound. */
export function rtWatchForget(tid: number): void {
  const l = load();
  if (!l || !watched.delete(tid)) return;
  l.forget(tid);
  if (watched.size) return;
  lastStall = stallOf(l);
  l.disarm();
}

/** The current window's firing, if it fired. */
function stallOf(l: Lib): RtStall | null {
  const fired = l.fired();
  return fired === 0 ? null : { afterMs: Number(BigInt(l.firedAt()) / 1000n - armedAt / 1000n) / 1000, threads: Math.max(0, fired) };
}

/** Whether the watchdog fired in this window (it is still on) or in the last one. */
export function rtStall(): RtStall | null {
  const l = load();
  return (l && watched.size ? stallOf(l) : null) ?? lastStall;
}

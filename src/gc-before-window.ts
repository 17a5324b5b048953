/**
 * A full garbage collection of tsnap's own heap right before a window
 * whose length is the point: a migration's downtime (sender and receiver)
 * and a copy-on-write dump's freeze.
 *
 * V8's pauses landed inside those windows in most traced migrations
 * (TSNAP_TRACE=1, 2026-12-03): on the sender major collections (the
 * mark-compact's pause) of 1-21 ms in a 20-40 ms downtime, on the
 * receiver scavenges of 1-8 ms.
 * Collected just before, the young generation is empty and no marking is
 * under way, so the window's own few MiB of allocation start neither.
 * It costs a few ms per 10 MiB of heap (tsnap's is 8-21 MiB at the final
 * round), spent while the target still runs; only the writes of those ms
 * join the last delta.
 *
 * Node exposes no collection without --expose-gc; the flag set at run
 * time gives `gc` to a new context (V8's documented behaviour for flags
 * read at context creation). TSNAP_GC_BEFORE_WINDOW=0 turns it off (A/B).
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { mark } from './trace.js';

let collect: (() => void) | null | undefined;

function collector(): (() => void) | null {
  if (collect !== undefined) return collect;
  collect = null;
  if (process.env.TSNAP_GC_BEFORE_WINDOW === '0') return collect;
  const own = (globalThis as { gc?: () => void }).gc;
  if (typeof own === 'function') return (collect = own);
  try {
    setFlagsFromString('--expose-gc');
    const fn = runInNewContext('gc') as unknown;
    if (typeof fn === 'function') collect = fn as () => void;
  } catch { /* no collector: the window runs as before */ }
  return collect;
}

/** Collects now (synchronously); `what` names the window in the trace. */
export function collectBeforeWindow(what: string): void {
  const fn = collector();
  if (!fn) return;
  fn();
  mark(`gc: collected before ${what}`);
}

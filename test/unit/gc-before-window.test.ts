/** The collection before a window: it collects, and leaves no `gc` in tsnap's own context. */
import { describe, it, expect } from 'vitest';
import { PerformanceObserver, constants } from 'node:perf_hooks';
import { collectBeforeWindow } from '../../src/gc-before-window.js';

describe('collectBeforeWindow', () => {
  it('runs a full collection now, without exposing gc to the main context', async () => {
    const kinds: number[] = [];
    const obs = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) kinds.push((e as { detail?: { kind?: number } }).detail?.kind ?? 0);
    });
    obs.observe({ entryTypes: ['gc'] });
    collectBeforeWindow('a test');
    await new Promise((r) => setTimeout(r, 50));
    obs.disconnect();
    expect(kinds).toContain(constants.NODE_PERFORMANCE_GC_MAJOR);
    expect((globalThis as { gc?: unknown }).gc).toBeUndefined();
  });
});

/**
 * A timeline for finding where time goes: with TSNAP_TRACE=1, `mark(label)`
 * writes "tsnap-trace PID MS LABEL" on stderr, MS being CLOCK_MONOTONIC in
 * milliseconds (the same clock in every process of one host, so the lines
 * of a sender and its receiver merge into one timeline). Unset, a mark is
 * one comparison.
 */
import { writeSync } from 'node:fs';
import { PerformanceObserver, performance, constants } from 'node:perf_hooks';

const on = process.env.TSNAP_TRACE === '1';
/**
 * TSNAP_TRACE_CPU=1 as well: each line also says the CPU time tsnap's
 * process has used so far, "cpu=MS" before the label (every thread: the
 * pool's reads too), so that a step's CPU shows beside its wall time.
 */
const withCpu = on && process.env.TSNAP_TRACE_CPU === '1';

export function mark(label: string): void {
  if (!on) return;
  const ms = Number(process.hrtime.bigint()) / 1e6;
  let cpu = '';
  if (withCpu) {
    const u = process.cpuUsage();
    cpu = `cpu=${((u.user + u.system) / 1000).toFixed(3)} `;
  }
  try { writeSync(2, `tsnap-trace ${process.pid} ${ms.toFixed(3)} ${cpu}${label}\n`); } catch { /* stderr gone */ }
}

/**
 * With TSNAP_TRACE=1 the garbage collector's pauses join the timeline
 * ("gc: KIND MS ms", at the pause's start): a window's step that took
 * 15 ms may be one of them.
 */
export function traceGc(): void {
  if (!on || gcTraced) return;
  gcTraced = true;
  // perf_hooks' NODE_PERFORMANCE_GC_* (labelled by number before 2026-12-03, wrongly: a
  // major collection was shown as "incremental", an incremental step as "weakcb").
  const kinds: Record<number, string> = { [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor', [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major', [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental', [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb' };
  new PerformanceObserver((list) => {
    const nowMono = Number(process.hrtime.bigint()) / 1e6;
    const nowPerf = performance.now();
    for (const e of list.getEntries()) {
      const kind = (e as { detail?: { kind?: number } }).detail?.kind ?? 0;
      const at = nowMono - (nowPerf - e.startTime);
      try { writeSync(2, `tsnap-trace ${process.pid} ${at.toFixed(3)} gc: ${kinds[kind] ?? kind} ${e.duration.toFixed(1)} ms\n`); } catch { /* stderr gone */ }
    }
  }).observe({ entryTypes: ['gc'] });
}
let gcTraced = false;

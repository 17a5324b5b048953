/**
 * A timeline for finding where time goes: with TSNAP_TRACE=1, `mark(label)`
 * writes "tsnap-trace PID MS LABEL" on stderr, MS being CLOCK_MONOTONIC in
 * milliseconds (the same clock in every process of one host, so the lines
 * of a sender and its receiver merge into one timeline). Unset, a mark is
 * one comparison.
 */
import { writeSync } from 'node:fs';

const on = process.env.TSNAP_TRACE === '1';

export function mark(label: string): void {
  if (!on) return;
  const ms = Number(process.hrtime.bigint()) / 1e6;
  try { writeSync(2, `tsnap-trace ${process.pid} ${ms.toFixed(3)} ${label}\n`); } catch { /* stderr gone */ }
}

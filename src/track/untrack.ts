/**
 * `tsnap untrack`: ends the tracking a pre-dump started. Killing the holder
 * closes the last copy of the userfaultfd; the kernel then unregisters every
 * range and drops all write-protection. Nothing remains in the target.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { stopHolder, killHolder, HOLDER_NAME } from './holder.js';
import { trackingRefs } from '../image/process-dirs.js';
import type { TrackingRef } from '../../formats/schema.js';

/** Holders tracking `pid`, found by their command line (`tsnap-track PID`). */
export function findHolders(pid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if (argv[0].endsWith(HOLDER_NAME) && argv[1] === String(pid)) out.push(Number(name));
    } catch { /* exited meanwhile */ }
  }
  return out;
}

export function untrackPid(pid: number): string {
  const holders = findHolders(pid);
  for (const h of holders) killHolder(h);
  return holders.length ? `stopped tracking process ${pid} (holder ${holders.join(', ')} ended)` : `process ${pid} is not tracked`;
}

/** Ends the tracking one pre-dump recorded (its holder), if it still runs. */
export function untrackRef(ref: TrackingRef): string {
  return stopHolder(ref)
    ? `stopped tracking process ${ref.targetPid} (holder ${ref.holderPid} ended)`
    : `process ${ref.targetPid} was not tracked any more (holder ${ref.holderPid} already gone)`;
}

/** The library's untrack of a pre-dump (a tree: of each of its processes); which images those are is image/'s to say. */
export function untrack(dir: string): string {
  const refs = trackingRefs(dir);
  return refs.map(untrackRef).join('\n');
}

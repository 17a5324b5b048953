/**
 * `tsnap untrack`: ends the tracking a pre-dump started. Killing the holder
 * closes the last copy of the userfaultfd; the kernel then unregisters every
 * range and drops all write-protection. Nothing remains in the target.
 */
import { join } from 'node:path';
import { readImage } from '../image/image-reader.js';
import { isTreeImage, readTreeManifest, imagedMembers } from '../image/tree-manifest.js';
import { readdirSync, readFileSync } from 'node:fs';
import { stopHolder, killHolder, HOLDER_NAME } from './holder.js';
import { TsnapError } from '../errors.js';

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

export function untrack(dir: string): string {
  if (isTreeImage(dir)) return imagedMembers(readTreeManifest(dir)).map((m) => untrack(join(dir, m.dir))).join('\n');
  const img = readImage(dir, { indexOnly: true });
  const ref = img.inventory.tracking;
  if (!ref) throw new TsnapError('usage', `${dir} is not a pre-dump: it holds no tracking`);
  return stopHolder(ref)
    ? `stopped tracking process ${ref.targetPid} (holder ${ref.holderPid} ended)`
    : `process ${ref.targetPid} was not tracked any more (holder ${ref.holderPid} already gone)`;
}

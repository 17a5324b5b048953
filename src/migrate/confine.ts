/**
 * Names `tsnap serve` builds from what a peer sent (the HELLO's pid,
 * iteration and file names, parent paths inside received inventories):
 * each is checked piece by piece and the result must resolve inside the
 * receiver's --dir, so that no message can make serve write or read
 * elsewhere.
 */
import { resolve, sep } from 'node:path';
import { TsnapError } from '../errors.js';

/** Linux's PID_MAX_LIMIT: no pid is larger, on any configuration. */
const PID_MAX_LIMIT = 1 << 22;

/** The HELLO's pid, or null when it is not a pid at all. */
export function wirePid(v: unknown): number | null {
  return typeof v === 'number' && Number.isSafeInteger(v) && v > 0 && v <= PID_MAX_LIMIT ? v : null;
}

/** `parts` joined onto `root`, refused unless the result lies strictly below `root`. */
export function inside(root: string, ...parts: string[]): string {
  const base = resolve(root);
  const p = resolve(base, ...parts);
  if (p !== base && p.startsWith(base.endsWith(sep) ? base : base + sep)) return p;
  throw new TsnapError('badImage', `migration stream: ${parts.join('/')} would lead out of ${base}`);
}

/** The directory of one migration: DIR/<pid>-<time>[-n], built from the validated pid only. */
export function migrationDirName(pid: number, now: number, attempt = 0): string {
  if (wirePid(pid) === null) throw new TsnapError('badImage', `migration stream: ${String(pid)} is not a pid`);
  return `${pid}-${Math.floor(now)}${attempt ? `-${attempt}` : ''}`;
}

/**
 * What a tracking remembers between tsnap runs, beside its holder: which
 * image's scan last cleared the written-page bits, and which pages rounds
 * that did not commit have cleared.
 *
 * The scan that reports written pages also write-protects them again, so
 * after each round the kernel only knows "written since that round". A
 * delta is right only against the image of the round that last cleared,
 * and only if that round committed; a round that died after its scan took
 * pages out of the kernel's record that no image holds. So each round:
 *   1. records itself (`round`, `scanned: false`) before its scan;
 *   2. adds everything its scan cleared to `pending` (`scanned: true`)
 *      before copying;
 *   3. once its image is committed, becomes `cleared` and empties `pending`.
 * The next round unions `pending` into what it copies; a round found with
 * `scanned: false` cleared pages nobody knows: the next round copies
 * everything. A round found committed (killed between its inventory and
 * step 3) is taken as `cleared`.
 *
 * Files are replaced by rename, never fsynced: what they must survive is
 * tsnap being killed; a crash of the machine ends the holder, and tracking
 * with it, anyway. One file per holder (pid and start time), 0600 in a
 * 0700 directory: it names image paths of the tracked process.
 */
import { existsSync, mkdirSync, chmodSync, readFileSync, writeFileSync, renameSync, rmSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { readStat } from '../proc/index.js';
import { readMetaFile } from '../image/metadata.js';
import { FileKind, type Inventory, type TrackingRef } from '../../formats/schema.js';
import { normalize, type Range } from '../image/ranges.js';

export const STATE_DIR = '/run/tsnap/tracking';

export interface ImageRef {
  imageId: string;
  /** Absolute path of the image directory. */
  dir: string;
  /** For a member of a tree image: the file (its manifest) whose presence commits it. */
  commitFile?: string;
}

export interface TrackingState {
  version: 1;
  targetPid: number;
  holderPid: number;
  holderStartTime: number;
  /** The committed image whose scan last cleared the written bits; null until the first commits. */
  cleared: ImageRef | null;
  /** Pages that rounds after `cleared` write-protected and no committed image holds. */
  pending: Range[];
  /** The round under way, or one that died: its image and whether its scan is all in `pending`. */
  round: (ImageRef & { scanned: boolean }) | null;
}

function fileOf(holderPid: number, holderStartTime: number): string {
  return join(STATE_DIR, `${holderPid}-${holderStartTime}.json`);
}

export function newState(ref: TrackingRef): TrackingState {
  return { version: 1, targetPid: ref.targetPid, holderPid: ref.holderPid, holderStartTime: ref.holderStartTime, cleared: null, pending: [], round: null };
}

/** The state of a tracking, or null when none was recorded (or it is unreadable). */
export function readState(ref: Pick<TrackingRef, 'holderPid' | 'holderStartTime' | 'targetPid'>): TrackingState | null {
  try {
    const s = JSON.parse(readFileSync(fileOf(ref.holderPid, ref.holderStartTime), 'utf8')) as TrackingState;
    if (s.version !== 1 || s.targetPid !== ref.targetPid || !Array.isArray(s.pending)) return null;
    return s;
  } catch {
    return null;
  }
}

export function writeState(s: TrackingState): void {
  mkdirSync(STATE_DIR, { recursive: true, mode: 0o700 });
  chmodSync(STATE_DIR, 0o700);
  const file = fileOf(s.holderPid, s.holderStartTime);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify({ ...s, pending: normalize(s.pending) }), { mode: 0o600 });
  renameSync(tmp, file);
}

/** Drops the record of a holder being ended (any start time: the pid is that holder's now). */
export function removeState(holderPid: number): void {
  let names: string[];
  try { names = readdirSync(STATE_DIR); } catch { return; }
  for (const n of names) if (n.startsWith(`${holderPid}-`)) rmSync(join(STATE_DIR, n), { force: true });
}

/** Drops the files of holders that are gone (their target exited, or they were killed). */
export function collectStaleStates(): void {
  let names: string[];
  try { names = readdirSync(STATE_DIR); } catch { return; }
  const lives = (pid: number, start?: number) => {
    try {
      const st = readStat(pid);
      return (start === undefined || st.startTime === start) && st.state !== 'Z' && st.state !== 'X';
    } catch {
      return false;
    }
  };
  for (const n of names) {
    // <holder pid>-<its start time>.json, and writeState's <that>.<writer pid>.tmp, left by a tsnap killed before its rename.
    const m = /^(\d+)-(\d+)\.json(?:\.(\d+)\.tmp)?$/.exec(n);
    if (!m) continue;
    const alive = lives(Number(m[1]), Number(m[2])) && (m[3] === undefined || lives(Number(m[3])));
    if (!alive) rmSync(join(STATE_DIR, n), { force: true });
  }
}

/** Whether the image `r` names was committed (its inventory, the commit record, is there and is that image). */
export function isCommitted(r: ImageRef): boolean {
  if (r.commitFile && !existsSync(r.commitFile)) return false;
  try {
    return readMetaFile<Inventory>(r.dir, FileKind.Inventory).imageId === r.imageId;
  } catch {
    return false;
  }
}

/**
 * Settles what a previous run left: a round whose image committed becomes
 * `cleared`; a round that died keeps its `pending` pages. Returns why the
 * record cannot be trusted for a delta, or null.
 */
export function settle(s: TrackingState): string | null {
  const r = s.round;
  if (!r) return null;
  s.round = null;
  if (isCommitted(r)) {
    s.cleared = { imageId: r.imageId, dir: r.dir };
    s.pending = [];
    return null;
  }
  if (!r.scanned) return `a round on it (${r.dir}) was killed while it scanned, so which pages it took is unknown`;
  return null;
}

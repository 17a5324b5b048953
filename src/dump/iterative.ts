/**
 * `tsnap dump --pre-dumps N`: the whole incremental loop in one command.
 * Pre-dumps while the process runs, each copying only what was written
 * since the previous one, until a round is small enough or stops
 * shrinking; then the final, frozen dump of the last small delta. Writes
 * DIR/1, DIR/2, ... with parents linked; the last one is the image to
 * restore.
 *
 * All or nothing: should any round fail or a signal come, the trackings
 * the loop started end, its rounds are removed, and the process runs on
 * (each round releases what it froze itself).
 */
import { PreCopyPolicy } from './precopy-policy.js';
import { join } from 'node:path';
import { mkdirSync, chmodSync, readdirSync, rmSync, closeSync } from 'node:fs';
import type { DumpOptions, DumpResult } from './dump.js';
import type { TreeDumpResult } from './tree.js';
import { takeSet, setTotals, type SetImage } from './take-set.js';
import { withAbortSignals } from '../freeze/safety-net.js';
import { readImage } from '../image/image-reader.js';
import { stopHolder } from '../track/tracking.js';
import { TsnapError, asTsnapError, interrupted } from '../errors.js';
import { openTargetPidfd } from './target-identity.js';
import { pausePoint } from '../fault-points.js';

export interface IterativeOptions extends Omit<DumpOptions, 'parent'> {
  /** At most this many pre-dumps before the final dump. */
  preDumps: number;
  /** Stop pre-dumping once a round writes at most this many pages. */
  smallEnoughPages?: number;
}

export interface IterativeResult {
  rounds: DumpResult[];
  final: DumpResult;
  /** Why the pre-dump loop ended. */
  stoppedBecause: string;
}

export async function dumpIteratively(opts: IterativeOptions): Promise<IterativeResult> {
  const it = await dumpLoop(opts, false);
  const one = (s: SetImage) => s.processes[0].result;
  return { rounds: it.rounds.map(one), final: one(it.final), stoppedBecause: it.stoppedBecause };
}

export interface TreeIterativeResult {
  rounds: TreeDumpResult[];
  final: TreeDumpResult;
  stoppedBecause: string;
}

/** The same loop for a process tree (--tree): each round a tree image, sized by the sum over its processes. */
export function dumpTreeIteratively(opts: IterativeOptions): Promise<TreeIterativeResult> {
  return dumpLoop(opts, true);
}

export interface LoopResult {
  /** The pre-dumps, DIR/1 .. DIR/n. */
  rounds: SetImage[];
  /** The final dump, DIR/n+1: the image to restore. */
  final: SetImage;
  /** Why the pre-dump loop ended. */
  stoppedBecause: string;
}

/** The loop over rounds, each a session over the process or (tree) its tree. */
export async function dumpLoop(opts: IterativeOptions, tree: boolean): Promise<LoopResult> {
  // Every round is of the process the first one found: by its pidfd, not
  // its pid, which may go to a stranger should it exit between two rounds.
  const targetPidfd = opts.targetPidfd ?? openTargetPidfd(opts.pid) ?? undefined;
  try {
    const targetGone = () => new TsnapError('noSuchProcess', `process ${opts.pid} exited during its pre-dump loop; pid ${opts.pid} may name another process now, which tsnap left alone; the loop's rounds were removed: dump it again if it was restarted`);
    return await roundsOf({ ...opts, targetPidfd, targetGone }, tree);
  } finally {
    if (opts.targetPidfd === undefined && targetPidfd !== undefined) closeSync(targetPidfd);
  }
}

function roundsOf(opts: IterativeOptions, tree: boolean): Promise<LoopResult> {
  return allOrNothing(opts, tree, async (checkAbort) => {
    const policy = new PreCopyPolicy({ maxRounds: opts.preDumps, smallEnoughPages: opts.smallEnoughPages });
    const rounds: SetImage[] = [];
    let stoppedBecause = `reached ${opts.preDumps} pre-dumps`;
    for (let i = 1; i <= opts.preDumps; i++) {
      checkAbort();
      const r = await takeSet({ ...opts, dir: join(opts.dir, String(i)), parent: i > 1 ? join(opts.dir, String(i - 1)) : undefined }, 'predump', tree);
      rounds.push(r);
      if (i === 1) pausePoint('loop-first-round-done');
      const v = policy.afterRound({ pages: setTotals(r).pagesWritten });
      if (v.stop) { stoppedBecause = v.reason; break; }
    }
    const n = rounds.length;
    checkAbort();
    const final = await takeSet({ ...opts, dir: join(opts.dir, String(n + 1)), parent: join(opts.dir, String(n)) }, 'dump', tree);
    return { rounds, final, stoppedBecause };
  });
}

async function allOrNothing<T>(opts: IterativeOptions, tree: boolean, loop: (checkAbort: () => void) => Promise<T>): Promise<T> {
  const created = prepareLoopDir(opts);
  try {
    return await withAbortSignals(loop, (sig) => interrupted(sig, `interrupted by ${sig}; the pre-dump loop of process ${opts.pid} was abandoned, its trackings ended and the process resumed unharmed`));
  } catch (err) {
    endTrackings(opts.dir, tree);
    for (const d of readdirSync(opts.dir)) if (/^\d+$/.test(d)) rmSync(join(opts.dir, d), { recursive: true, force: true });
    if (created) rmSync(opts.dir, { recursive: true, force: true });
    throw asTsnapError(err, `dump of process ${opts.pid}`);
  }
}

/** Stops every holder the loop's pre-dumps started (the loop has no --parent: all of them are its own). */
function endTrackings(dir: string, tree: boolean): void {
  const seen = new Set<number>();
  for (const round of readdirSync(dir).filter((d) => /^\d+$/.test(d))) {
    const images = tree ? readdirSync(join(dir, round)).filter((d) => /^\d+$/.test(d)).map((d) => join(dir, round, d)) : [join(dir, round)];
    for (const img of images) {
      let ref;
      try { ref = readImage(img).inventory.tracking; } catch { continue; }
      if (ref && !seen.has(ref.holderPid)) { seen.add(ref.holderPid); stopHolder(ref); }
    }
  }
}

/** Returns whether it created the directory. */
function prepareLoopDir(opts: IterativeOptions): boolean {
  if (!Number.isInteger(opts.preDumps) || opts.preDumps < 1) throw new TsnapError('usage', '--pre-dumps must be a positive number');
  try {
    if (readdirSync(opts.dir).length) throw new TsnapError('imageDir', `${opts.dir} is not empty; choose a new or empty --dir`);
  } catch (err) {
    if (err instanceof TsnapError) throw err;
  }
  const created = mkdirSync(opts.dir, { recursive: true, mode: 0o700 }) !== undefined;
  chmodSync(opts.dir, 0o700);
  return created;
}

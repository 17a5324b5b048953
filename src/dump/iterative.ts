/**
 * `tsnap dump --pre-dumps N`: the whole incremental loop in one command.
 * Pre-dumps while the process runs, each copying only what was written
 * since the previous one, until a round is small enough or stops
 * shrinking; then the final, frozen dump of the last small delta. Writes
 * DIR/1, DIR/2, ... with parents linked; the last one is the image to
 * restore.
 */
import { join } from 'node:path';
import { mkdirSync, chmodSync, readdirSync } from 'node:fs';
import { dump, preDump, type DumpOptions, type DumpResult } from './dump.js';
import { dumpTree, type TreeDumpResult } from './tree.js';
import { TsnapError } from '../errors.js';

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
  prepareLoopDir(opts);
  const small = opts.smallEnoughPages ?? 64;
  const rounds: DumpResult[] = [];
  let stoppedBecause = `reached ${opts.preDumps} pre-dumps`;
  for (let i = 1; i <= opts.preDumps; i++) {
    const r = await preDump({ ...opts, dir: join(opts.dir, String(i)), parent: i > 1 ? join(opts.dir, String(i - 1)) : undefined });
    rounds.push(r);
    const pages = r.stats.pagesWritten;
    if (i > 1 && pages <= small) { stoppedBecause = `round ${i} wrote ${pages} pages (<= ${small})`; break; }
    const prev = rounds[rounds.length - 2];
    if (prev && i > 2 && pages >= prev.stats.pagesWritten * 0.9) { stoppedBecause = `round ${i} did not shrink (${pages} pages after ${prev.stats.pagesWritten})`; break; }
  }
  const n = rounds.length;
  const final = await dump({ ...opts, dir: join(opts.dir, String(n + 1)), parent: join(opts.dir, String(n)) });
  return { rounds, final, stoppedBecause };
}

export interface TreeIterativeResult {
  rounds: TreeDumpResult[];
  final: TreeDumpResult;
  stoppedBecause: string;
}

/** The same loop for a process tree (--tree): each round a tree image, sized by the sum over its processes. */
export async function dumpTreeIteratively(opts: IterativeOptions): Promise<TreeIterativeResult> {
  prepareLoopDir(opts);
  const small = opts.smallEnoughPages ?? 64;
  const written = (t: TreeDumpResult) => t.processes.reduce((n, p) => n + p.result.stats.pagesWritten, 0);
  const rounds: TreeDumpResult[] = [];
  let stoppedBecause = `reached ${opts.preDumps} pre-dumps`;
  for (let i = 1; i <= opts.preDumps; i++) {
    const r = await dumpTree({ ...opts, dir: join(opts.dir, String(i)), parent: i > 1 ? join(opts.dir, String(i - 1)) : undefined }, 'predump');
    rounds.push(r);
    const pages = written(r);
    if (i > 1 && pages <= small) { stoppedBecause = `round ${i} wrote ${pages} pages (<= ${small})`; break; }
    const prev = rounds[rounds.length - 2];
    if (prev && i > 2 && pages >= written(prev) * 0.9) { stoppedBecause = `round ${i} did not shrink (${pages} pages after ${written(prev)})`; break; }
  }
  const n = rounds.length;
  const final = await dumpTree({ ...opts, dir: join(opts.dir, String(n + 1)), parent: join(opts.dir, String(n)) }, 'dump');
  return { rounds, final, stoppedBecause };
}

function prepareLoopDir(opts: IterativeOptions): void {
  if (!Number.isInteger(opts.preDumps) || opts.preDumps < 1) throw new TsnapError('usage', '--pre-dumps must be a positive number');
  try {
    if (readdirSync(opts.dir).length) throw new TsnapError('imageDir', `${opts.dir} is not empty; choose a new or empty --dir`);
  } catch (err) {
    if (err instanceof TsnapError) throw err;
  }
  mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  chmodSync(opts.dir, 0o700);
}

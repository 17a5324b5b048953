/**
 * One round over a set of processes: one process, or (tree) it and all its
 * descendants. Both are a dump session (session.ts) over their set, each
 * process imaged by the same step (image-process.ts); what differs is only
 * how the set is frozen and what commits the image (the process's
 * inventory, or the tree's manifest). Loops over rounds (dump --pre-dumps,
 * migrate) take each round here and never ask which of the two it is.
 */
import { dump, preDump, type DumpOptions } from './dump.js';
import type { TreeDumpResult } from './tree.js';
import type { Range } from '../image/ranges.js';
import type { Mode } from './image-process.js';

export interface SetImage extends TreeDumpResult {
  /** A tree image (DIR/<pid> each, DIR/tree): false for one process's image in DIR. */
  tree: boolean;
  /** With `leaveOut` (one process only): the memory the image does not hold. */
  leftOut?: Range[];
}

export async function takeSet(opts: DumpOptions, mode: Mode, tree: boolean): Promise<SetImage> {
  if (tree) {
    // Loaded only for a tree: a one-process dump (the CLI's common case) starts without it.
    const { dumpTree } = await import('./tree.js');
    return { ...(await dumpTree(opts, mode)), tree: true };
  }
  const r = mode === 'dump' ? await dump(opts) : await preDump(opts);
  return {
    dir: r.dir, root: opts.pid, tree: false, processes: [{ pid: opts.pid, result: r }],
    killed: r.killed, held: r.held, frozenAt: r.frozenAt, frozenUs: r.stats.frozenUs,
    ...(r.leftOut ? { leftOut: r.leftOut } : {}),
  };
}

/** Sums over the round's processes. */
export function setTotals(s: SetImage): { pagesWritten: number; bytesRaw: number; bytesStored: number } {
  const rs = s.processes.map((p) => p.result.stats);
  return {
    pagesWritten: rs.reduce((n, r) => n + r.pagesWritten, 0),
    bytesRaw: rs.reduce((n, r) => n + r.bytesRaw, 0),
    bytesStored: rs.reduce((n, r) => n + r.bytesStored, 0),
  };
}

/** What dump and pre-dump print: per process, per tree, and the --pre-dumps loop. */
import type { DumpResult } from '../dump/dump.js';
import type { TreeDumpResult } from '../dump/tree.js';
import type { IterativeResult, TreeIterativeResult, LoopResult } from '../dump/iterative.js';
import type { SetImage } from '../dump/take-set.js';
import { formatBytes, formatUs } from '../format.js';
import { jsonLine, type DumpDoc, type TreeDumpDoc, type PreDumpsDoc, type TreePreDumpsDoc } from './json-docs.js';
import type { Output } from './output.js';

export type DumpWhat = 'dumped' | 'pre-dumped';

const commandOf = (what: DumpWhat) => (what === 'dumped' ? 'dump' : 'pre-dump');

export function dumpDoc(r: DumpResult, what: DumpWhat, pid: number): DumpDoc {
  return { command: commandOf(what), pid, dir: r.dir, imageId: r.imageId, kind: r.kind, killed: r.killed, trackingLost: r.trackingLost, stats: r.stats };
}

export function treeDumpDoc(t: TreeDumpResult, what: DumpWhat): TreeDumpDoc {
  return {
    command: commandOf(what), tree: true,
    dir: t.dir, root: t.root, killed: t.killed, frozenUs: t.frozenUs,
    processes: t.processes.map((p) => ({ pid: p.pid, dir: p.result.dir, kind: p.result.kind, trackingLost: p.result.trackingLost, stats: p.result.stats })),
  };
}

export function reportDump(out: Output, r: DumpResult, what: DumpWhat, pid: number, json?: boolean): void {
  if (json) { out.result(jsonLine(dumpDoc(r, what, pid))); return; }
  const s = r.stats;
  out.result(
    `${what} process ${pid} to ${r.dir} (${r.kind}${what === 'dumped' ? `, ${r.killed ? 'killed' : 'left running'}` : ', still running, tracked'})\n`
    + `  pages: ${s.pagesWritten} written of ${s.pagesScanned} mapped${s.pagesZero ? `, ${s.pagesZero} dropped` : ''}, ${formatBytes(s.bytesRaw)} -> ${formatBytes(s.bytesStored)} stored\n`
    + `  frozen ${formatUs(s.frozenUs)} (freeze ${formatUs(s.freezeUs)}, memory ${formatUs(s.memdumpUs)}, ${s.throughputMiBps.toFixed(0)} MiB/s)\n`,
  );
}

export function reportTree(out: Output, t: TreeDumpResult, what: DumpWhat, json?: boolean): void {
  if (json) { out.result(jsonLine(treeDumpDoc(t, what))); return; }
  const bytes = t.processes.reduce((n, p) => n + p.result.stats.bytesStored, 0);
  out.result(`${what} the tree of process ${t.root} (${t.processes.length} processes) to ${t.dir}${what === 'dumped' ? ` (${t.killed ? 'killed' : 'left running'})` : ''}\n`
    + t.processes.map((p) => `  ${p.pid}: ${p.result.kind}, ${formatBytes(p.result.stats.bytesStored)} stored\n`).join('')
    + `  ${formatBytes(bytes)} in all${what === 'dumped' ? `, frozen ${formatUs(t.frozenUs)}` : ''}\n`);
}

export function reportIterations(out: Output, it: IterativeResult, pid: number, json?: boolean): void {
  if (json) {
    const doc: PreDumpsDoc = { command: 'dump', final: it.final.dir, stoppedBecause: it.stoppedBecause, rounds: [...it.rounds, it.final].map((r) => ({ dir: r.dir, kind: r.kind, stats: r.stats })) };
    out.result(jsonLine(doc));
    return;
  }
  for (const r of it.rounds) reportDump(out, r, 'pre-dumped', pid);
  out.result(`pre-dumps ended: ${it.stoppedBecause}\n`);
  reportDump(out, it.final, 'dumped', pid);
  out.result(`restore with: tsnap restore --dir ${it.final.dir}\n`);
}

export function reportTreeIterations(out: Output, it: TreeIterativeResult, json?: boolean): void {
  if (json) {
    const doc: TreePreDumpsDoc = { command: 'dump', tree: true, final: it.final.dir, stoppedBecause: it.stoppedBecause, rounds: [...it.rounds, it.final].map((t) => ({ dir: t.dir, processes: t.processes.map((p) => ({ pid: p.pid, kind: p.result.kind, stats: p.result.stats })) })) };
    out.result(jsonLine(doc));
    return;
  }
  for (const t of it.rounds) reportTree(out, t, 'pre-dumped');
  out.result(`pre-dumps ended: ${it.stoppedBecause}\n`);
  reportTree(out, it.final, 'dumped');
  out.result(`restore with: tsnap restore --dir ${it.final.dir}\n`);
}

/** One round of a session, of one process or of a tree (each in its own documented form). */
export function reportSet(out: Output, s: SetImage, what: DumpWhat, json?: boolean): void {
  if (s.tree) reportTree(out, s, what, json);
  else reportDump(out, s.processes[0].result, what, s.root, json);
}

/** The --pre-dumps loop, of one process or of a tree. */
export function reportLoop(out: Output, it: LoopResult, json?: boolean): void {
  if (it.final.tree) { reportTreeIterations(out, it, json); return; }
  const one = (s: SetImage) => s.processes[0].result;
  reportIterations(out, { rounds: it.rounds.map(one), final: one(it.final), stoppedBecause: it.stoppedBecause }, it.final.root, json);
}

/**
 * Which image holds each page of a chain. Walks newest to oldest: a `here`
 * run answers with that image's data, a `zero` run answers "absent", a
 * `parent` run or an uncovered page of a delta defers to the parent; a full
 * image ends the walk (its uncovered pages are absent).
 */
import { PageWhere, type PageRun } from '../../formats/schema.js';
import { subtract, normalize, union, type Range } from './ranges.js';
import { PAGE_SIZE } from '../sys/uapi.js';
import { tableFromRuns, type RunTable } from './run-table.js';

export interface ChainLevel {
  kind: 'full' | 'delta';
  runs: readonly PageRun[];
  /** The same runs as columns, when the caller has them (runTableOf). */
  table?: RunTable;
}

export interface ResolvedRun {
  start: number;
  pages: number;
  /** Index in the chain, 0 = newest. */
  image: number;
  chunk: number;
  offset: number;
}

const P = PAGE_SIZE;

/** Resolved runs as columns (run i: start[i], pages[i], ...), sorted by address; the arrays may be longer than `length`. */
export interface ResolvedTable {
  length: number;
  start: Float64Array;
  pages: Float64Array;
  /** Index in the chain, 0 = newest. */
  image: Int32Array;
  chunk: Uint32Array;
  offset: Float64Array;
}

/** A level as columns (the restore's path: no object per run). */
export interface TableLevel {
  kind: 'full' | 'delta';
  table: RunTable;
}

/**
 * Resolved data runs for the addresses in `within`, sorted by address
 * (`usedChunks[level][chunk]` set to 1 for every chunk they read, when
 * given: one pass fewer over the runs in the restore's cold code). One
 * sweep by address over every level at once: at each address the newest
 * level with a `here` or `zero` run there answers, up to where that run
 * ends or a newer level's next run begins. Level by level, subtracting
 * what each answered and sorting the result at the end, was ~3 ms of a
 * 64 MiB chain's restore (9 830 runs); the sweep makes no intermediate
 * sets and no sort. Over columns, into columns: as objects in and out it
 * was ~0.9 s of a cold 1 GiB chain restore at load 10, besides the
 * garbage collector's share.
 */
export function resolveTables(chain: readonly TableLevel[], within: readonly Range[], usedChunks?: readonly Uint8Array[]): ResolvedTable {
  // A full image ends the walk: older levels are never asked.
  let depth = chain.findIndex((l) => l.kind === 'full') + 1;
  if (depth === 0) depth = chain.length;
  const levels = chain.slice(0, depth).map((l) => l.table);
  const ws = normalize(within);
  // Usually about one piece per run of the levels; grown when a chain cuts more.
  let cap = ws.length + 16;
  for (const t of levels) cap += t.length;
  let out = resolvedTable(cap);
  const at = new Int32Array(depth);
  let n = 0;
  for (const w of ws) {
    let pos = w.start;
    while (pos < w.end) {
      let end = w.end;
      for (let level = 0; level < depth; level++) {
        const t = levels[level];
        const ts = t.start, tp = t.pages, tw = t.where, len = t.length;
        let i = at[level];
        // Past the runs that end before `pos`, and past `parent` runs: they answer nothing (a
        // level's other runs are what it holds), and as `pos` only grows none is needed again.
        while (i < len && (ts[i] + tp[i] * P <= pos || tw[i] === PageWhere.Parent)) i++;
        at[level] = i;
        if (i === len) continue;
        const rStart = ts[i];
        if (rStart > pos) {
          // Not here at `pos`, but from rStart this level takes over from the older ones.
          if (rStart < end) end = rStart;
          continue;
        }
        const rEnd = rStart + tp[i] * P;
        if (rEnd < end) end = rEnd;
        if (tw[i] === PageWhere.Here) {
          if (n === cap) out = grown(out, (cap *= 2));
          const chunk = t.chunk[i];
          out.start[n] = pos;
          out.pages[n] = (end - pos) / P;
          out.image[n] = level;
          out.chunk[n] = chunk;
          out.offset[n] = t.offset[i] + (pos - rStart);
          n++;
          if (usedChunks) usedChunks[level][chunk] = 1;
        }
        break;
      }
      pos = end;
    }
  }
  out.length = n;
  return out;
}

function resolvedTable(cap: number): ResolvedTable {
  return { length: 0, start: new Float64Array(cap), pages: new Float64Array(cap), image: new Int32Array(cap), chunk: new Uint32Array(cap), offset: new Float64Array(cap) };
}

function grown(t: ResolvedTable, cap: number): ResolvedTable {
  const g = resolvedTable(cap);
  g.start.set(t.start);
  g.pages.set(t.pages);
  g.image.set(t.image);
  g.chunk.set(t.chunk);
  g.offset.set(t.offset);
  return g;
}

/** The resolved runs of `t` as objects (readers that want them: squash, lazy restore, the chunk-order fill). */
export function resolvedRuns(t: ResolvedTable): ResolvedRun[] {
  const out: ResolvedRun[] = new Array(t.length);
  for (let i = 0; i < t.length; i++) out[i] = { start: t.start[i], pages: t.pages[i], image: t.image[i], chunk: t.chunk[i], offset: t.offset[i] };
  return out;
}

/** Resolved runs given as objects (tests, callers that have them) as columns; columns as they are. */
export function asResolvedTable(rs: readonly ResolvedRun[] | ResolvedTable): ResolvedTable {
  if (!Array.isArray(rs)) return rs as ResolvedTable;
  const runs = rs as readonly ResolvedRun[];
  const t = resolvedTable(runs.length);
  runs.forEach((r, i) => {
    t.start[i] = r.start;
    t.pages[i] = r.pages;
    t.image[i] = r.image;
    t.chunk[i] = r.chunk;
    t.offset[i] = r.offset;
  });
  t.length = runs.length;
  return t;
}

/** resolveTables over levels given as runs (or as columns), as objects. */
export function resolveChain(chain: readonly ChainLevel[], within: readonly Range[], usedChunks?: readonly Uint8Array[]): ResolvedRun[] {
  return resolvedRuns(resolveTables(chain.map((l) => ({ kind: l.kind, table: l.table ?? tableFromRuns(l.runs) })), within, usedChunks));
}

/** Addresses whose data the chain holds (for finding pages the process dropped since). */
export function storedRanges(resolved: readonly ResolvedRun[]): Range[] {
  return normalize(resolved.map((r) => ({ start: r.start, end: r.start + r.pages * P })));
}

/**
 * storedRanges(resolveChain(chain, everything)), folded from the oldest
 * level that counts (the newest full image) to the newest: each delta's
 * `here` runs add to what is stored, its `zero` runs take away, the rest
 * leaves it as it was. Sets of ranges only, no run per piece: for a 4 GiB
 * chain of nine rounds resolveChain built ~20 000 runs, 33-120 ms (load
 * 13) of a migration's final round before its freeze, during which the
 * writer dirties pages the frozen window then copies.
 */
export function chainStoredRanges(chain: readonly ChainLevel[]): Range[] {
  let from = chain.findIndex((l) => l.kind === 'full');
  if (from < 0) from = chain.length - 1;
  let stored: Range[] = [];
  for (let level = from; level >= 0; level--) stored = foldLevel(stored, chain[level].table ?? chain[level].runs);
  return stored;
}

/** One step of chainStoredRanges: what is stored once a level with `runs` is added on top of `stored`. */
export function foldLevel(stored: readonly Range[], runs: readonly PageRun[] | RunTable): Range[] {
  const t = Array.isArray(runs) ? tableFromRuns(runs as readonly PageRun[]) : (runs as RunTable);
  const here: Range[] = [];
  const zero: Range[] = [];
  for (let i = 0; i < t.length; i++) {
    const w = t.where[i];
    if (w === PageWhere.Parent) continue;
    (w === PageWhere.Here ? here : zero).push({ start: t.start[i], end: t.start[i] + t.pages[i] * P });
  }
  return union(subtract(stored, normalize(zero)), normalize(here));
}

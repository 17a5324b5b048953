/**
 * A level's page runs as columns of typed arrays instead of one object per
 * run. A restore of a 1 GiB chain walks ~160 000 runs per level in cold
 * code; as objects (msgpack's arrays, the decoded runs, the resolved runs)
 * they cost the resolver ~0.9 s and the garbage collector ~0.8 s of one CLI
 * restore at load 10 (`node --cpu-prof`, docs/performance.md "Chains as
 * columns"). The objects (`PagemapImage.runs`) are still there for every
 * other reader, made on first use from the columns.
 */
import { type PageRun, type PagemapImage } from '../../formats/schema.js';

export interface RunTable {
  length: number;
  /** Addresses (exact in a double: below 2^53). */
  start: Float64Array;
  pages: Float64Array;
  /** PageWhere, or whatever else the image held (validateTable refuses it). */
  where: Float64Array;
  chunk: Float64Array;
  /** Byte offset in the chunk's raw data. */
  offset: Float64Array;
}

export function emptyTable(n: number): RunTable {
  return { length: n, start: new Float64Array(n), pages: new Float64Array(n), where: new Float64Array(n), chunk: new Float64Array(n), offset: new Float64Array(n) };
}

export function tableFromRuns(runs: readonly PageRun[]): RunTable {
  const t = emptyTable(runs.length);
  for (let i = 0; i < runs.length; i++) {
    const r = runs[i];
    t.start[i] = r.start;
    t.pages[i] = r.pages;
    t.where[i] = r.where;
    t.chunk[i] = r.chunk;
    t.offset[i] = r.offset;
  }
  return t;
}

export function runsFromTable(t: RunTable): PageRun[] {
  const out: PageRun[] = new Array(t.length);
  for (let i = 0; i < t.length; i++) out[i] = { start: t.start[i], pages: t.pages[i], where: t.where[i], chunk: t.chunk[i], offset: t.offset[i] };
  return out;
}

/** The columns of decoded pagemaps; their `runs` are made from them when first asked for. */
const tables = new WeakMap<object, RunTable>();

/**
 * A pagemap whose runs are `t`, objects made on first use of `.runs`
 * (enumerable, so it compares and encodes as a plain pagemap). Assigning
 * `.runs` replaces them, and the columns are made again from the new ones.
 */
export function pagemapWithTable(chunks: PagemapImage['chunks'], t: RunTable): PagemapImage {
  const pm = { chunks } as PagemapImage;
  let runs: PageRun[] | null = null;
  Object.defineProperty(pm, 'runs', {
    enumerable: true,
    configurable: true,
    get: () => (runs ??= runsFromTable(t)),
    set: (v: PageRun[]) => {
      runs = v;
      tables.delete(pm);
    },
  });
  tables.set(pm, t);
  return pm;
}

/** The runs of `pm` as columns: kept for a decoded pagemap, made from `.runs` otherwise. */
export function runTableOf(pm: PagemapImage): RunTable {
  return tables.get(pm) ?? tableFromRuns(pm.runs);
}

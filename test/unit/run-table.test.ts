/** The runs as columns (image/run-table.ts): the same runs, the same verdicts, as the objects they replace on the restore's path. */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { PageWhere, type PageRun, type ChunkEntry } from '../../formats/schema.js';
import { encodePagemap, decodePagemap, validateRuns, validateTable } from '../../src/image/page-runs.js';
import { tableFromRuns, runsFromTable, runTableOf } from '../../src/image/run-table.js';
import { resolveTables, resolveChain, resolvedRuns, asResolvedTable, type ChainLevel } from '../../src/image/chain-index.js';
import { TsnapError } from '../../src/errors.js';

const P = 4096;
const FILE = '/x/pagemap';
const chunks: ChunkEntry[] = [0, 1, 2, 3].map((i) => ({ fileOffset: i * 16 * P, storedLength: 16 * P, rawLength: 16 * P, codec: 'none', crc32: i }));

/** Sorted runs of 1-6 pages with gaps, in chunks 0-3. */
const runsArb = fc.array(fc.record({ gap: fc.integer({ min: 0, max: 3 }), pages: fc.integer({ min: 1, max: 6 }), where: fc.constantFrom(PageWhere.Here, PageWhere.Here, PageWhere.Zero, PageWhere.Parent), chunk: fc.integer({ min: 0, max: 3 }), at: fc.integer({ min: 0, max: 10 }) }), { maxLength: 40 })
  .map((rs) => {
    let at = 0;
    return rs.map((r): PageRun => {
      const start = (at + r.gap) * P;
      at += r.gap + r.pages;
      return { start, pages: r.pages, where: r.where, chunk: r.where === PageWhere.Here ? r.chunk : 0, offset: r.where === PageWhere.Here ? r.at * P : 0 };
    });
  });

const verdict = (f: () => void): string => {
  try {
    f();
    return 'ok';
  } catch (err) {
    expect(err).toBeInstanceOf(TsnapError);
    return (err as Error).message;
  }
};

describe('run table', () => {
  it('round-trips runs through columns and through the pagemap codec (property)', () => {
    fc.assert(fc.property(runsArb, (runs) => {
      expect(runsFromTable(tableFromRuns(runs))).toEqual(runs);
      const pm = decodePagemap(encodePagemap({ chunks, runs }), FILE);
      // Compares and encodes as the plain pagemap it replaces; the columns are what was decoded.
      expect(pm).toEqual({ chunks, runs });
      expect(encodePagemap(pm)).toEqual(encodePagemap({ chunks, runs }));
      expect(runsFromTable(runTableOf(pm))).toEqual(runs);
    }), { numRuns: 300 });
  });

  it('validateTable gives validateRuns\' verdicts and messages on damaged runs (property)', () => {
    const field = fc.constantFrom('start', 'pages', 'where', 'chunk', 'offset') as fc.Arbitrary<keyof PageRun>;
    const value = fc.oneof(fc.integer({ min: -2, max: 70 }).map((x) => x * P), fc.integer({ min: -3, max: 7 }), fc.constantFrom(NaN, 0.5, 2 ** 48, Infinity));
    fc.assert(fc.property(runsArb, fc.nat(), field, value, (runs, k, f, v) => {
      const bad = runs.map((r) => ({ ...r }));
      if (bad.length) (bad[k % bad.length] as unknown as Record<string, number>)[f] = v;
      const want = verdict(() => validateRuns(bad, chunks, FILE));
      expect(verdict(() => validateTable(tableFromRuns(bad), chunks, FILE))).toBe(want);
      // decodePagemap checks the same (a non-integer chunk index is the shape check's to refuse).
      if (Number.isSafeInteger(v) || f === 'pages' || f === 'offset' || f === 'start') {
        expect(verdict(() => decodePagemap(encodePagemap({ chunks, runs: bad }), FILE))).toBe(want);
      }
    }), { numRuns: 500 });
  });

  it('assigning .runs of a decoded pagemap replaces its columns', () => {
    const pm = decodePagemap(encodePagemap({ chunks, runs: [{ start: 0, pages: 1, where: PageWhere.Here, chunk: 0, offset: 0 }] }), FILE);
    pm.runs = [{ start: P, pages: 2, where: PageWhere.Zero, chunk: 0, offset: 0 }];
    expect(runsFromTable(runTableOf(pm))).toEqual(pm.runs);
  });

  it('resolveTables over columns gives resolveChain\'s runs, and its columns round-trip (property)', () => {
    const lvl = fc.record({ full: fc.boolean(), runs: runsArb });
    fc.assert(fc.property(fc.array(lvl, { minLength: 1, maxLength: 5 }), fc.integer({ min: 0, max: 200 }), (levels, span) => {
      const chain: ChainLevel[] = levels.map((l) => ({ kind: l.full ? 'full' : 'delta', runs: l.runs }));
      const within = [{ start: 0, end: span * P }];
      const t = resolveTables(levels.map((l) => ({ kind: l.full ? 'full' : 'delta', table: tableFromRuns(l.runs) })), within);
      const objects = resolveChain(chain, within);
      expect(resolvedRuns(t)).toEqual(objects);
      expect(resolvedRuns(asResolvedTable(objects))).toEqual(objects);
    }), { numRuns: 500 });
  });
});

/** ChainPageSource: fetchNow() (a fault's read, on the pager's thread) gives exactly what fetch() gives. */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PageFileWriter } from '../../src/image/page-file.js';
import { ChainPageSource } from '../../src/lazy/page-source.js';
import { PageWhere, type PageRun, type ChunkEntry } from '../../formats/schema.js';

const P = 4096;
const CHUNK = 4 * P;
const BASE = 0x10000000;

describe('ChainPageSource.fetchNow', () => {
  let dir: string;
  let chunks: ChunkEntry[];
  // Three chunks of four pages; page k of chunk c holds byte 16 * c + k + 1 (lz4 compresses them).
  // Runs: chunk 0 at BASE (4 pages), chunk 1 right after (2 pages from its offset 1), a hole of 2 pages, chunk 2 (4 pages).
  const runs: PageRun[] = [
    { start: BASE, pages: 4, where: PageWhere.Here, chunk: 0, offset: 0 },
    { start: BASE + 4 * P, pages: 2, where: PageWhere.Here, chunk: 1, offset: P },
    { start: BASE + 8 * P, pages: 4, where: PageWhere.Here, chunk: 2, offset: 0 },
  ];
  const expected = (addr: number, len: number): Buffer | null => {
    const out = Buffer.alloc(len);
    let any = false;
    for (let a = addr; a < addr + len; a += P) {
      const r = runs.find((x) => x.start <= a && a < x.start + x.pages * P);
      if (!r) continue;
      any = true;
      const page = (r.offset + (a - r.start)) / P;
      out.fill(16 * r.chunk + page + 1, a - addr, a - addr + P);
    }
    return any ? out : null;
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tsnap-lazy-source-'));
    const w = await PageFileWriter.create(dir, 'lz4', CHUNK);
    for (let c = 0; c < 3; c++) {
      const buf = await w.acquire();
      for (let k = 0; k < 4; k++) buf.fill(16 * c + k + 1, k * P, (k + 1) * P);
      w.submit(buf, CHUNK);
    }
    await w.finish(false);
    chunks = w.chunks;
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('matches fetch() inside a run, across runs and holes, and in a hole alone, with the cache cold, warm and in flight', async () => {
    const source = () => new ChainPageSource([{ dir, kind: 'full', runs, chunks }], [{ start: BASE, end: BASE + 12 * P }]);
    const ranges: [number, number][] = [[BASE + P, 2 * P], [BASE + 3 * P, 4 * P], [BASE + 6 * P, 2 * P], [BASE, 12 * P], [BASE + 9 * P, P]];
    for (const [addr, len] of ranges) {
      const cold = source();
      expect(cold.fetchNow(addr, len)).toEqual(expected(addr, len));
      cold.close();
      const warm = source();
      const viaFetch = await warm.fetch(addr, len);
      expect(viaFetch).toEqual(expected(addr, len));
      expect(warm.fetchNow(addr, len)).toEqual(expected(addr, len));
      warm.close();
      const inFlight = source();
      const pending = inFlight.fetch(addr, len);
      expect(inFlight.fetchNow(addr, len)).toEqual(expected(addr, len));
      expect(await pending).toEqual(expected(addr, len));
      inFlight.close();
    }
  });
});

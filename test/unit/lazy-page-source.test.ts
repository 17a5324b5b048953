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

/**
 * The pooled chunk buffers: a view fetch() or fetchNow() handed out keeps
 * its bytes until it is released, however many chunks are read meanwhile;
 * released views let the source read later chunks into the same memory.
 */
describe('ChainPageSource buffer reuse', () => {
  const CHUNKS = 24;
  const dirs: string[] = [];
  afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

  for (const codec of ['none', 'lz4'] as const) {
    it(`never reuses a buffer while a view of it is held (${codec} chunks)`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'tsnap-lazy-reuse-'));
      dirs.push(dir);
      const w = await PageFileWriter.create(dir, codec, CHUNK);
      for (let c = 0; c < CHUNKS; c++) {
        const buf = await w.acquire();
        for (let k = 0; k < 4; k++) buf.fill((7 * c + k + 1) & 0xff, k * P, (k + 1) * P);
        w.submit(buf, CHUNK);
      }
      await w.finish(false);
      const runs: PageRun[] = Array.from({ length: CHUNKS }, (_, c) => ({ start: BASE + c * CHUNK, pages: 4, where: PageWhere.Here, chunk: c, offset: 0 }));
      const want = (addr: number, len: number) => {
        const out = Buffer.alloc(len);
        for (let a = addr; a < addr + len; a += P) {
          const c = Math.floor((a - BASE) / CHUNK);
          out.fill((7 * c + (a - BASE - c * CHUNK) / P + 1) & 0xff, a - addr, a - addr + P);
        }
        return out;
      };
      const src = new ChainPageSource([{ dir, kind: 'full', runs, chunks: w.chunks }], [{ start: BASE, end: BASE + CHUNKS * CHUNK }]);
      // mulberry32: an LCG's low bits (seed % 2) would merely alternate.
      let seed = 12345;
      const rnd = (n: number) => {
        seed = (seed + 0x6d2b79f5) | 0;
        let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
        t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
        return ((t ^ (t >>> 14)) >>> 0) % n;
      };
      const held: { data: Buffer; addr: number; len: number }[] = [];
      const memories = new Set<ArrayBufferLike>();
      let reused = 0;
      for (let step = 0; step < 600; step++) {
        const c = rnd(CHUNKS);
        const addr = BASE + c * CHUNK + rnd(4) * P;
        const len = Math.min(P * (1 + rnd(3)), BASE + (c + 1) * CHUNK - addr);
        const data = rnd(2) ? src.fetchNow(addr, len) : await src.fetch(addr, len);
        // Buffer.equals: toEqual compares byte by byte through the matcher, seconds per thousand pages.
        expect(data!.equals(want(addr, len))).toBe(true);
        if (memories.has(data!.buffer)) reused++;
        memories.add(data!.buffer);
        held.push({ data: data!, addr, len });
        // Release a random held view (or keep up to a dozen alive across many reads).
        while (held.length > 1 + rnd(12)) {
          const h = held.splice(rnd(held.length), 1)[0];
          expect(h.data.equals(want(h.addr, h.len))).toBe(true);
          src.release(h.data);
        }
      }
      for (const h of held) expect(h.data.equals(want(h.addr, h.len))).toBe(true);
      src.close();
      // Uncompressed chunks are handed out as views of the pooled buffers themselves.
      if (codec === 'none') expect(reused).toBeGreaterThan(100);
    });
  }
});

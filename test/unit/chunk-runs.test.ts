/** The receiver's check that the runs PAGE_CHUNKs carried (what the live build wrote) are the index's runs. */
import { describe, it, expect } from 'vitest';
import { runMismatch } from '../../src/migrate/chunk-file.js';
import { PageWhere, type PageRun } from '../../formats/schema.js';

const here = (start: number, pages: number, chunk: number, offset: number): PageRun => ({ start, pages, where: PageWhere.Here, chunk, offset });

describe('runMismatch', () => {
  const index: PageRun[] = [
    here(0x10000, 2, 0, 0), { start: 0x12000, pages: 5, where: PageWhere.Zero, chunk: 0, offset: 0 },
    here(0x20000, 1, 0, 8192), here(0x30000, 3, 1, 0), { start: 0x40000, pages: 1, where: PageWhere.Parent, chunk: 0, offset: 0 },
  ];
  const sent = [[{ start: 0x10000, pages: 2, offset: 0 }, { start: 0x20000, pages: 1, offset: 8192 }], [{ start: 0x30000, pages: 3, offset: 0 }]];

  it('the same runs: no difference (zero and parent runs are not in any chunk)', () => {
    expect(runMismatch(sent, index)).toBeNull();
    expect(runMismatch([], [])).toBeNull();
  });

  it('names a run whose start, length or offset differs, a run missing on either side, and a chunk that never came', () => {
    const variants: [typeof sent, RegExp][] = [
      [[[sent[0][0], { ...sent[0][1], pages: 2 }], sent[1]], /chunk 0 carried 2 page\(s\) at 0x20000 .*lists 1 page\(s\) at 0x20000/],
      [[[sent[0][0], { ...sent[0][1], start: 0x1000 }], sent[1]], /chunk 0 carried 1 page\(s\) at 0x1000/],
      [[[sent[0][0], { ...sent[0][1], offset: 4096 }], sent[1]], /offset 4096/],
      [[[sent[0][0]], sent[1]], /chunk 0 carried no more runs where the index lists 1 page\(s\) at 0x20000/],
      [[sent[0], [...sent[1], { start: 0x50000, pages: 1, offset: 12288 }]], /chunk 1 carried 1 page\(s\) at 0x50000 .*lists no more/],
      [[sent[0]], /in chunk 1, which did not arrive/],
    ];
    for (const [got, msg] of variants) expect(runMismatch(got, index)).toMatch(msg);
  });
});

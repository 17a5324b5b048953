/**
 * The tracking's record of which image last cleared the written pages
 * (src/track/state.ts): how a round a killed tsnap left behind is settled,
 * and how selected ranges are merged so no page is selected twice.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { settle, isCommitted, type TrackingState } from '../../src/track/state.js';
import { writeMetaFile } from '../../src/image/metadata.js';
import { FileKind, FORMAT_VERSION } from '../../formats/schema.js';
import { mergeDumpRanges } from '../../src/dump/delta-selection.js';

const dirs: string[] = [];
afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

/** Image ids stand for images a, b and c (real ids: the inventory is checked for shape on read). */
const ID: Record<string, string> = {
  a: '00000000-0000-4000-8000-00000000000a',
  b: '00000000-0000-4000-8000-00000000000b',
  c: '00000000-0000-4000-8000-00000000000c',
};

function imageDir(name: string | null): string {
  const d = mkdtempSync(join(tmpdir(), 'tsnap-rec-'));
  dirs.push(d);
  if (name) {
    writeMetaFile(d, FileKind.Inventory, {
      formatVersion: FORMAT_VERSION, imageId: ID[name], createdAt: new Date().toISOString(), tool: { name: 'tsnap', version: '0' },
      kind: 'full', parent: null, pid: 1, arch: 'x86_64', kernel: 'test', pageSize: 4096, chunkSize: 4096, compression: 'none', files: {},
    });
  }
  return d;
}

const base = (): TrackingState => ({
  version: 1, targetPid: 1, holderPid: 2, holderStartTime: 3,
  cleared: { imageId: ID.a, dir: '/x/1' }, pending: [{ start: 0x1000, end: 0x3000 }], round: null,
});

describe('settling the round a previous run left', () => {
  it('a committed round becomes the cleared level and owes nothing', () => {
    const s = base();
    const dir = imageDir('b');
    s.round = { imageId: ID.b, dir, scanned: true };
    expect(settle(s)).toBeNull();
    expect(s.cleared).toEqual({ imageId: ID.b, dir });
    expect(s.pending).toEqual([]);
    expect(s.round).toBeNull();
  });

  it('a round that died after recording its scan keeps the cleared level and what it owes', () => {
    const s = base();
    s.round = { imageId: ID.b, dir: imageDir(null), scanned: true };
    expect(settle(s)).toBeNull();
    expect(s.cleared!.imageId).toBe(ID.a);
    expect(s.pending).toEqual([{ start: 0x1000, end: 0x3000 }]);
  });

  it('a round that died during its scan makes the record untrustworthy', () => {
    const s = base();
    s.round = { imageId: ID.b, dir: imageDir(null), scanned: false };
    expect(settle(s)).toMatch(/killed while it scanned/);
  });

  it('an inventory of another image, or a tree member without its manifest, is not that round committed', () => {
    expect(isCommitted({ imageId: ID.b, dir: imageDir('c') })).toBe(false);
    const top = imageDir(null);
    const member = imageDir('b');
    const ref = { imageId: ID.b, dir: member, commitFile: join(top, 'tree') };
    expect(isCommitted(ref)).toBe(false);
    writeFileSync(join(top, 'tree'), 'x');
    expect(isCommitted(ref)).toBe(true);
  });
});

describe('mergeDumpRanges', () => {
  it('any union of ranges within VMAs comes out sorted, disjoint, covering the same pages', () => {
    const P = 4096;
    const vmaPages = 16;
    const arb = fc.array(fc.record({ vma: fc.nat(3), s: fc.nat(vmaPages - 1), len: fc.integer({ min: 1, max: vmaPages }) }), { maxLength: 30 });
    fc.assert(fc.property(arb, (rs) => {
      const input = rs.map(({ vma, s, len }) => ({ vma, start: (vma * vmaPages + s) * P, end: (vma * vmaPages + Math.min(vmaPages, s + len)) * P }));
      const out = mergeDumpRanges(input);
      const pages = (xs: typeof input) => new Set(xs.flatMap((r) => Array.from({ length: (r.end - r.start) / P }, (_, i) => r.start + i * P)));
      expect(pages(out)).toEqual(pages(input));
      for (let i = 1; i < out.length; i++) expect(out[i].start).toBeGreaterThanOrEqual(out[i - 1].end);
      expect(out.reduce((n, r) => n + (r.end - r.start) / P, 0)).toBe(pages(input).size);
    }), { numRuns: 300 });
  });
});

/** The image format's codecs: headers, metadata, page index, chunked page files. */
import { describe, it, expect, afterAll } from 'vitest';
import fc from 'fast-check';
import { mkdtempSync, rmSync, statSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeHeader, decodeHeader } from '../../src/image/header.js';
import { writeMetaFile, readMetaFile } from '../../src/image/metadata.js';
import { encodePagemap, decodePagemap, validateRuns } from '../../src/image/page-runs.js';
import { PageFileWriter, PageFileReader } from '../../src/image/page-file.js';
import { FileKind, PageWhere, type ChunkEntry, type PageRun } from '../../formats/schema.js';
import { TsnapError } from '../../src/errors.js';

const dirs: string[] = [];
const tmp = () => { const d = mkdtempSync(join(tmpdir(), 'tsnap-fmt-')); dirs.push(d); return d; };
afterAll(() => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); });

function badImage(fn: () => unknown, msg: RegExp): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(TsnapError);
    expect((err as TsnapError).kind).toBe('badImage');
    expect((err as Error).message).toMatch(msg);
    return;
  }
  throw new Error('expected a badImage error');
}

describe('file header', () => {
  const h = encodeHeader({ version: 1, kind: FileKind.Process, flags: 0, payloadLength: 1234, payloadCrc: 0xdeadbeef });
  it('round-trips', () => {
    expect(decodeHeader(h, 'f', FileKind.Process)).toEqual({ version: 1, kind: FileKind.Process, flags: 0, payloadLength: 1234, payloadCrc: 0xdeadbeef });
  });
  it('names the file for each kind of damage', () => {
    const mut = (off: number, v: number) => { const b = Buffer.from(h); b[off] = v; return b; };
    badImage(() => decodeHeader(mut(0, 0x41), 'D/process', FileKind.Process), /D\/process: not a tsnap image file/);
    badImage(() => decodeHeader(mut(8, 2), 'D/process', FileKind.Process), /D\/process: image format version 2 is newer/);
    badImage(() => decodeHeader(mut(8, 0), 'D/process', FileKind.Process), /D\/process: image format version 0 is not supported/);
    badImage(() => decodeHeader(mut(20, 7), 'D/process', FileKind.Process), /D\/process: header checksum mismatch/);
    badImage(() => decodeHeader(h, 'D/pagemap', FileKind.Pagemap), /D\/pagemap: holds file kind 2, expected 3/);
    badImage(() => decodeHeader(h.subarray(0, 20), 'D/process', FileKind.Process), /D\/process: truncated/);
  });
});

describe('metadata files', () => {
  it('round-trip bigints, buffers and unknown fields, mode 0600', () => {
    const d = tmp();
    const value = { big: 2n ** 64n - 1n, neg: -1n, n: 2 ** 40, buf: Buffer.from([1, 2, 3]), nested: [[1, 'a'], { x: null }], futureField: 'ignored by old readers' };
    writeMetaFile(d, FileKind.Stats, value);
    expect(statSync(join(d, 'stats')).mode & 0o777).toBe(0o600);
    expect(readMetaFile(d, FileKind.Stats)).toEqual(value);
  });
  it('a flipped payload byte or a cut file is an error naming it', () => {
    const d = tmp();
    writeMetaFile(d, FileKind.Stats, { a: 1, b: 'x'.repeat(100) });
    const f = join(d, 'stats');
    const good = readFileSync(f);
    const bad = Buffer.from(good); bad[50] ^= 1;
    writeFileSync(f, bad);
    badImage(() => readMetaFile(d, FileKind.Stats), /stats: checksum mismatch/);
    writeFileSync(f, good.subarray(0, good.length - 3));
    badImage(() => readMetaFile(d, FileKind.Stats), /stats: truncated/);
  });
});

describe('page index', () => {
  const chunks: ChunkEntry[] = [{ fileOffset: 0, storedLength: 8192, rawLength: 8192, codec: 'none', crc32: 0 }];
  it('round-trips (property)', () => {
    fc.assert(fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 50 }), fc.integer({ min: 1, max: 9 }), fc.constantFrom(PageWhere.Parent, PageWhere.Zero)), { maxLength: 30 }), (specs) => {
      let at = 0;
      const runs: PageRun[] = specs.map(([gap, pages, where]) => {
        at += gap;
        const r = { start: at * 4096, pages, where, chunk: 0, offset: 0 };
        at += pages;
        return r;
      });
      expect(decodePagemap(encodePagemap({ chunks, runs }), 'pm')).toEqual({ chunks, runs });
    }));
  });
  it('rejects indexes that would misplace pages', () => {
    const run = (start: number, pages: number, where = PageWhere.Here, chunk = 0, offset = 0): PageRun => ({ start, pages, where, chunk, offset });
    badImage(() => validateRuns([run(8192, 1), run(4096, 1)], chunks, 'pm'), /not sorted/);
    badImage(() => validateRuns([run(4096, 2), run(8192, 1)], chunks, 'pm'), /overlap/);
    badImage(() => validateRuns([run(100, 1)], chunks, 'pm'), /misaligned/);
    badImage(() => validateRuns([run(4096, 1, PageWhere.Here, 3)], chunks, 'pm'), /chunk 3 does not exist/);
    badImage(() => validateRuns([run(4096, 2, PageWhere.Here, 0, 4096)], chunks, 'pm'), /exceeds its chunk/);
    badImage(() => validateRuns([run(4096, 1, 7 as PageWhere)], chunks, 'pm'), /unknown location/);
  });
});

describe('pages file', () => {
  for (const codec of ['none', 'lz4'] as const) {
    it(`${codec}: every chunk reads back identical, with more chunks than the writer's pool`, async () => {
      const d = tmp();
      const chunkSize = 16 << 10;
      const w = await PageFileWriter.create(d, codec, chunkSize);
      const written: Buffer[] = [];
      for (let i = 0; i < 1500; i++) {
        const buf = await w.acquire();
        const len = chunkSize - (i % 4) * 4096;
        if (i % 3 === 0) for (let j = 0; j < len; j++) buf[j] = (Math.random() * 256) | 0; // incompressible
        else buf.fill(i & 0xff, 0, len);
        written.push(Buffer.from(buf.subarray(0, len)));
        expect(w.submit(buf, len)).toBe(i);
      }
      await w.finish(false);
      const r = new PageFileReader(d, w.chunks);
      for (let i = 0; i < written.length; i += 7) {
        expect(r.readChunk(i).equals(written[i])).toBe(true);
        expect((await r.readChunkAsync(i)).equals(written[i])).toBe(true);
      }
      if (codec === 'lz4') {
        expect(w.chunks[0].codec).toBe('none'); // random bytes do not shrink: stored raw
        expect(w.chunks[1].codec).toBe('lz4');
      }
      r.close();
    });
  }
});

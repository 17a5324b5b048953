// tsnap_pread_crc32 (the restore's read and CRC of a chunk in one native
// call) against node:zlib's CRC of the same bytes, and PageFileReader's
// paths that use it: the pool's (readChunkAsync) and the thread's
// (readChunk, once a reader has read 16 MiB), a damaged chunk refused by each.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, openSync, closeSync, readFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { nativePreadCrc32 } from '../../src/sys/crc32.js';
import { PageFileWriter, PageFileReader } from '../../src/image/page-file.js';
import { HEADER_SIZE } from '../../formats/schema.js';

let dir: string;
beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'tsnap-pread-crc-')); });
afterAll(() => { rmSync(dir, { recursive: true, force: true }); });

describe('tsnap_pread_crc32', () => {
  const fn = nativePreadCrc32();

  it('is built', () => {
    expect(fn).not.toBeNull();
  });

  it('reads and checksums as pread + zlib would, across its 256 KiB pieces, sync and on the pool', async () => {
    const data = randomBytes((3 << 20) + 123);
    const path = join(dir, 'data');
    writeFileSync(path, data);
    const fd = openSync(path, 'r');
    try {
      const crc = Buffer.alloc(4);
      for (const [off, len] of [[0, 1], [0, 256 << 10], [7, (256 << 10) + 1], [4096, 1 << 20], [0, data.length], [1000, (2 << 20) + 999]]) {
        const buf = Buffer.alloc(len);
        expect(Number(fn!(fd, buf, len, off, crc))).toBe(len);
        expect(buf.equals(data.subarray(off, off + len))).toBe(true);
        expect(crc.readUInt32LE(0)).toBe(zlibCrc32(data.subarray(off, off + len)) >>> 0);
        const buf2 = Buffer.alloc(len);
        const crc2 = Buffer.alloc(4);
        const got = await new Promise<number>((resolve, reject) => fn!.async(fd, buf2, len, off, crc2, (err, ret) => (err ? reject(err) : resolve(Number(ret)))));
        expect(got).toBe(len);
        expect(buf2.equals(buf)).toBe(true);
        expect(crc2.readUInt32LE(0)).toBe(crc.readUInt32LE(0));
      }
      // Short at the end of the file: the bytes there, and their CRC.
      const buf = Buffer.alloc(1 << 20);
      const off = data.length - 5000;
      expect(Number(fn!(fd, buf, buf.length, off, crc))).toBe(5000);
      expect(crc.readUInt32LE(0)).toBe(zlibCrc32(data.subarray(off)) >>> 0);
    } finally {
      closeSync(fd);
    }
  });

  it('gives -errno for a failed read', () => {
    const fd = openSync(join(dir, 'wo'), 'w');
    try {
      expect(Number(fn!(fd, Buffer.alloc(16), 16, 0, Buffer.alloc(4)))).toBe(-9); // EBADF: not open for reading
    } finally {
      closeSync(fd);
    }
  });
});

describe('PageFileReader with the native read', () => {
  const CHUNK = 1 << 20;
  const N = 20; // past the 16 MiB after which readChunk takes the native read

  async function write(sub: string): Promise<{ dir: string; reader: () => PageFileReader; expected: Buffer[] }> {
    const d = join(dir, sub);
    mkdirSync(d);
    const w = await PageFileWriter.create(d, 'none', CHUNK);
    const expected: Buffer[] = [];
    for (let i = 0; i < N; i++) {
      const buf = await w.acquire();
      randomBytes(CHUNK).copy(buf);
      expected.push(Buffer.from(buf.subarray(0, CHUNK)));
      w.submit(buf, CHUNK);
    }
    await w.finish(false);
    const chunks = w.chunks;
    return { dir: d, reader: () => new PageFileReader(d, chunks), expected };
  }

  it('reads every chunk as written, on the pool and on the thread, into a reused buffer', async () => {
    const { reader, expected } = await write('good');
    const r = reader();
    try {
      const into = Buffer.allocUnsafeSlow(CHUNK);
      for (let i = 0; i < N; i++) {
        expect((await r.readChunkAsync(i, into)).equals(expected[i]), `readChunkAsync(${i})`).toBe(true);
        expect(r.readChunk(i, into).equals(expected[i]), `readChunk(${i})`).toBe(true);
      }
    } finally {
      r.close();
    }
  });

  it('refuses a damaged chunk on either path, naming it', async () => {
    const { dir: d, reader } = await write('bad');
    const last = N - 1;
    const r0 = reader();
    const entry = (r0 as unknown as { chunks: { fileOffset: number }[] }).chunks[last];
    r0.close();
    // One flipped byte in the last chunk.
    const path = join(d, 'pages');
    const at = HEADER_SIZE + entry.fileOffset + 4321;
    const byte = readFileSync(path).subarray(at, at + 1);
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.from([byte[0] ^ 0x10]), 0, 1, at);
    closeSync(fd);
    const r = reader();
    try {
      await expect(r.readChunkAsync(last)).rejects.toThrow(new RegExp(`chunk ${last} checksum mismatch`));
      for (let i = 0; i < last; i++) r.readChunk(i);
      expect(() => r.readChunk(last)).toThrow(new RegExp(`chunk ${last} checksum mismatch`));
    } finally {
      r.close();
    }
  });
});

/** PAGE_CHUNK frames (wire v2): what the sender encodes the receiver decodes; anything else is refused in one line. */
import { describe, it, expect } from 'vitest';
import { encodeChunkHead, decodeChunk, chunkData } from '../../src/migrate/page-stream.js';
import { compressSync } from 'lz4-napi';
import { PageWhere } from '../../formats/schema.js';

const run = (start: number, pages: number, offset: number) => ({ start, pages, offset, where: PageWhere.Here, chunk: 0 });

describe('PAGE_CHUNK', () => {
  it('round-trips runs and data, raw and lz4', () => {
    const raw = Buffer.alloc(3 * 4096);
    raw.fill(7, 4096);
    const runs = [run(0x7f0000000000, 1, 0), run(0x7f0000010000, 2, 4096)];
    const plain = decodeChunk(Buffer.concat([encodeChunkHead(5, raw.length, 'none', runs), raw]));
    expect(plain).toMatchObject({ index: 5, rawLength: raw.length, codec: 'none', runs: runs.map(({ start, pages, offset }) => ({ start, pages, offset })) });
    expect(chunkData(plain).equals(raw)).toBe(true);
    const z = compressSync(raw);
    const packed = decodeChunk(Buffer.concat([encodeChunkHead(0, raw.length, 'lz4', runs), z]));
    expect(chunkData(packed).equals(raw)).toBe(true);
  });

  it('refuses runs outside their chunk, odd lengths, unknown codecs and short frames', () => {
    const raw = Buffer.alloc(4096);
    const bad = (head: Buffer, body = raw) => () => decodeChunk(Buffer.concat([head, body]));
    expect(bad(encodeChunkHead(0, 4096, 'none', [run(0x1000, 2, 0)]))).toThrow(/^migration stream: bad PAGE_CHUNK message: run at 0x1000 lies outside its chunk/);
    expect(bad(encodeChunkHead(0, 4096, 'none', [run(0x1001, 1, 0)]))).toThrow(/run at 0x1001/);
    expect(bad(encodeChunkHead(0, 4000, 'none', []))).toThrow(/raw length 4000/);
    expect(bad(encodeChunkHead(0, 8192, 'none', []))).toThrow(/4096 bytes stored for 8192/);
    const head = encodeChunkHead(0, 4096, 'none', []);
    head.writeUInt8(9, 8);
    expect(bad(head)).toThrow(/unknown codec 9/);
    expect(() => decodeChunk(Buffer.alloc(8))).toThrow(/too short/);
    const lz = encodeChunkHead(0, 4096, 'lz4', []);
    expect(bad(lz, Buffer.from([1, 2, 3, 4, 5]))).toThrow(/lz4 length prefix/);
  });
});

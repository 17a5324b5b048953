/**
 * liblz4 (src/sys/lz4.ts) writes the stored form lz4-napi reads and the
 * other way round: images written before and after the switch stay
 * readable by every tsnap.
 */
import { describe, it, expect } from 'vitest';
import { randomBytes } from 'node:crypto';
import { compressSync, uncompressSync } from 'lz4-napi';
import { nativeLz4, lz4CompressInto, lz4DecompressInto } from '../../src/sys/lz4.js';

function heapLike(size: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size / 8; i++) b.writeBigUInt64LE(i % 512 < 256 ? BigInt.asUintN(64, BigInt(i) * 0x9e3779b97f4a7c15n) : BigInt(i & 0xff), i * 8);
  return b;
}

describe.runIf(nativeLz4())('liblz4 through koffi', () => {
  it('its stored chunks decode with lz4-napi, and lz4-napi\'s with it', async () => {
    for (const size of [4096, 16 << 10, 1 << 20]) {
      const src = heapLike(size);
      const out = Buffer.alloc(size);
      const n = await lz4CompressInto(src, out);
      expect(n).toBeGreaterThan(4);
      expect(n).toBeLessThan(size);
      expect(out.readUInt32LE(0)).toBe(size);
      expect(uncompressSync(out.subarray(0, n)).equals(src)).toBe(true);
      const back = Buffer.alloc(size);
      expect(lz4DecompressInto(compressSync(src), back)).toBe(size);
      expect(back.equals(src)).toBe(true);
    }
  });

  it('says 0 for data that would not shrink, and for inputs too small to', async () => {
    const out = Buffer.alloc(1 << 20);
    expect(await lz4CompressInto(randomBytes(1 << 20), out)).toBe(0);
    expect(await lz4CompressInto(Buffer.alloc(5), out)).toBe(0);
  });

  it('many compressions in flight into their own buffers each give their own input back', async () => {
    const srcs = Array.from({ length: 32 }, (_, i) => { const b = heapLike(64 << 10); b.writeUInt32LE(i, 0); return b; });
    const outs = srcs.map((s) => Buffer.alloc(s.length));
    const ns = await Promise.all(srcs.map((s, i) => lz4CompressInto(s, outs[i])));
    ns.forEach((n, i) => expect(uncompressSync(outs[i].subarray(0, n)).equals(srcs[i])).toBe(true));
  });

  it('refuses a damaged block instead of reading past it', async () => {
    const src = heapLike(64 << 10);
    const out = Buffer.alloc(src.length);
    const n = await lz4CompressInto(src, out);
    const bad = Buffer.from(out.subarray(0, n));
    bad.fill(0xff, 8, 64);
    expect(lz4DecompressInto(bad, Buffer.alloc(src.length))).toBe(-1);
  });
});

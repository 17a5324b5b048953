// tsnap_crc_writev (the one-copy fill: CRC from a read-only mapping of the
// pages file, then process_vm_writev from that mapping) against node:zlib's
// CRC and the bytes at their destinations, here written into this process
// itself; and its SIGBUS guard: a file shrunk under the mapping is an error,
// not the end of tsnap.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, openSync, closeSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { nativeCrcWritev, nativeCrcWritevMany, mapReadOnly, unmap } from '../../src/sys/map-fill.js';
import { libc } from '../../src/sys/libc.js';

let dir: string;
beforeAll(() => { dir = mkdtempSync(join(tmpdir(), 'tsnap-map-fill-')); });
afterAll(() => { rmSync(dir, { recursive: true, force: true }); });

const PIECE = 256 << 10;

/** (offset in the chunk, destination address, length) triples, as the fill passes them. */
function piecesOf(list: { offset: number; dest: Buffer; len: number }[]): Buffer {
  const b = Buffer.alloc(list.length * 24);
  list.forEach((p, i) => {
    b.writeBigUInt64LE(BigInt(p.offset), i * 24);
    b.writeBigUInt64LE(libc.address(p.dest), i * 24 + 8);
    b.writeBigUInt64LE(BigInt(p.len), i * 24 + 16);
  });
  return b;
}

describe('tsnap_crc_writev', () => {
  const fn = nativeCrcWritev();

  it('is built and its guard installed', () => {
    expect(fn).not.toBeNull();
  });

  it('takes the CRC of the whole chunk and writes every piece, across its 256 KiB pieces, sync and on the pool', async () => {
    const len = 3 * PIECE + 4096 * 5 + 17;
    const data = randomBytes(len + 8192);
    const path = join(dir, 'data');
    writeFileSync(path, data);
    const fd = openSync(path, 'r');
    const base = mapReadOnly(fd, data.length);
    try {
      const at = 4096; // the chunk starts inside the file, as after a header
      const chunk = data.subarray(at, at + len);
      // Pieces that straddle the CRC's pieces, a gap between two (pages no run needs), one that ends the chunk.
      const layout = [[0, 4096], [4096, PIECE], [PIECE + 4096 + 8192, PIECE + 100], [2 * PIECE + 20000, len - (2 * PIECE + 20000)]];
      for (const async of [false, true]) {
        const dests = layout.map(([, l]) => Buffer.alloc(l));
        const pieces = piecesOf(layout.map(([o, l], i) => ({ offset: o, dest: dests[i], len: l })));
        const crc = Buffer.alloc(4);
        const src = base + BigInt(at);
        const got = async
          ? await new Promise<number>((resolve, reject) => fn!.async(process.pid, src, len, pieces, layout.length, crc, (err, ret) => (err ? reject(err) : resolve(Number(ret)))))
          : Number(fn!(process.pid, src, len, pieces, layout.length, crc));
        expect(got).toBe(layout.reduce((s, [, l]) => s + l, 0));
        expect(crc.readUInt32LE(0)).toBe(zlibCrc32(chunk) >>> 0);
        layout.forEach(([o, l], i) => expect(dests[i].equals(chunk.subarray(o, o + l))).toBe(true));
      }
    } finally {
      unmap(base, data.length);
      closeSync(fd);
    }
  });

  it('a write that fails part way is short, at the piece that failed', () => {
    const data = randomBytes(2 * PIECE);
    const path = join(dir, 'short');
    writeFileSync(path, data);
    const fd = openSync(path, 'r');
    const base = mapReadOnly(fd, data.length);
    try {
      const dest = Buffer.alloc(8192);
      const pieces = Buffer.alloc(48);
      pieces.writeBigUInt64LE(0n, 0);
      pieces.writeBigUInt64LE(libc.address(dest), 8);
      pieces.writeBigUInt64LE(8192n, 16);
      pieces.writeBigUInt64LE(8192n, 24);
      pieces.writeBigUInt64LE(4096n, 32); // page 1: never mapped
      pieces.writeBigUInt64LE(4096n, 40);
      expect(Number(fn!(process.pid, base, data.length, pieces, 2, Buffer.alloc(4)))).toBe(8192);
      expect(dest.equals(data.subarray(0, 8192))).toBe(true);
    } finally {
      unmap(base, data.length);
      closeSync(fd);
    }
  });

  it('a file shrunk under the mapping is -EFAULT, and this process goes on', () => {
    const size = 4 * PIECE;
    const path = join(dir, 'shrinks');
    writeFileSync(path, randomBytes(size));
    const fd = openSync(path, 'r+');
    const base = mapReadOnly(fd, size);
    try {
      ftruncateSync(fd, PIECE);
      const dest = Buffer.alloc(size);
      const pieces = piecesOf([{ offset: 0, dest, len: size }]);
      expect(Number(fn!(process.pid, base, size, pieces, 1, Buffer.alloc(4)))).toBe(-14);
      // Again: the guard is still there.
      expect(Number(fn!(process.pid, base, size, pieces, 1, Buffer.alloc(4)))).toBe(-14);
    } finally {
      unmap(base, size);
      closeSync(fd);
    }
  });

  it('several chunks in one call (tsnap_crc_writev_many): each result and CRC; it stops after a failed one', () => {
    const many = nativeCrcWritevMany()!;
    expect(many).not.toBeNull();
    const data = randomBytes(3 * PIECE);
    const path = join(dir, 'many');
    writeFileSync(path, data);
    const fd = openSync(path, 'r');
    const base = mapReadOnly(fd, data.length);
    try {
      const dests = [Buffer.alloc(PIECE), Buffer.alloc(PIECE)];
      const chunks = [0, PIECE, 2 * PIECE];
      const descs = Buffer.alloc(3 * 32);
      chunks.forEach((off, i) => {
        descs.writeBigUInt64LE(base + BigInt(off), i * 32);
        descs.writeBigUInt64LE(BigInt(PIECE), i * 32 + 8);
        descs.writeBigUInt64LE(BigInt(i), i * 32 + 16);
        descs.writeBigUInt64LE(1n, i * 32 + 24);
      });
      const pieces = Buffer.concat([
        piecesOf([{ offset: 0, dest: dests[0], len: PIECE }, { offset: 0, dest: dests[1], len: PIECE }]),
        Buffer.alloc(24), // the third chunk's piece: to address 0, unmapped
      ]);
      pieces.writeBigUInt64LE(BigInt(PIECE), 2 * 24 + 16);
      const done = Buffer.alloc(3 * 16);
      // Chunk 1 (the second) is written; chunk 2's write fails: 3 chunks done, the last one short.
      expect(many(process.pid, descs, 3, pieces, done)).toBe(3);
      chunks.forEach((off, i) => expect(Number(done.readBigInt64LE(i * 16 + 8))).toBe(zlibCrc32(data.subarray(off, off + PIECE)) >>> 0));
      expect(Number(done.readBigInt64LE(0))).toBe(PIECE);
      expect(Number(done.readBigInt64LE(16))).toBe(PIECE);
      expect(Number(done.readBigInt64LE(32))).toBe(0);
      expect(dests[0].equals(data.subarray(0, PIECE))).toBe(true);
      expect(dests[1].equals(data.subarray(PIECE, 2 * PIECE))).toBe(true);
      // A failure stops the batch: the chunk after it is never touched.
      done.fill(0x55);
      descs.copy(descs, 0, 64, 96); // chunk 0 is now the failing one
      expect(many(process.pid, descs, 3, pieces, done)).toBe(1);
      expect(done.readBigInt64LE(16)).toBe(0x5555555555555555n);
    } finally {
      unmap(base, data.length);
      closeSync(fd);
    }
  });
});

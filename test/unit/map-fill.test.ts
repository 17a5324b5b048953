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
import { nativeCrcWritev, nativeCrcWritevMany, nativeCrcGather, mapReadOnly, unmap } from '../../src/sys/map-fill.js';
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

/** u64s of a list of numbers. */
function u64s(xs: (number | bigint)[]): Buffer {
  const b = Buffer.alloc(Math.max(1, xs.length) * 8);
  xs.forEach((x, i) => b.writeBigUInt64LE(BigInt(x), i * 8));
  return b;
}

/** Runs [chunk, offset, length in pages, destination] as a resolved table's columns, every chunk in level 0. */
function columns(runs: [number, number, number, number][]) {
  return {
    base: Uint32Array.of(0),
    start: Float64Array.from(runs, (r) => r[3]),
    pages: Float64Array.from(runs, (r) => r[2]),
    image: new Int32Array(runs.length),
    chunk: Uint32Array.from(runs, (r) => r[0]),
    offset: Float64Array.from(runs, (r) => r[1]),
  };
}

describe('tsnap_crc_gather and tsnap_crc32_combine_many', () => {
  const g = nativeCrcGather();
  const P = 4096;

  it('are built', () => {
    expect(g).not.toBeNull();
  });

  it('combine: the CRC of A then B from their CRCs and B\'s length, empty parts too', () => {
    const data = randomBytes(300_000);
    const cuts = [0, 1, 7, 4096, 65_537, 299_999, 300_000];
    const a = Buffer.alloc(cuts.length * 4), b = Buffer.alloc(cuts.length * 4), out = Buffer.alloc(cuts.length * 4);
    cuts.forEach((c, i) => {
      a.writeUInt32LE(zlibCrc32(data.subarray(0, c)) >>> 0, i * 4);
      b.writeUInt32LE(zlibCrc32(data.subarray(c)) >>> 0, i * 4);
    });
    g!.combine(a, b, u64s(cuts.map((c) => data.length - c)), cuts.length, out);
    cuts.forEach((_, i) => expect(out.readUInt32LE(i * 4)).toBe(zlibCrc32(data) >>> 0));
  });

  /**
   * Four chunks of one mapped file, runs of all four interleaved by destination (as a chain's
   * levels are), some not in offset order and pages no run uses; in two lanes, each checking its
   * part of each chunk, over two calls each; the CRCs combined equal each whole chunk's.
   */
  it('writes every run and takes each whole chunk\'s CRC, in two lanes of several calls', async () => {
    const CH = 75 * P;
    const data = randomBytes(4 * CH + P);
    const path = join(dir, 'gather');
    writeFileSync(path, data);
    const fd = openSync(path, 'r');
    const base = mapReadOnly(fd, data.length);
    try {
      const at = [P, P + CH, P + 2 * CH, P + 3 * CH];
      const chunk = (k: number) => data.subarray(at[k], at[k] + CH);
      // [chunk, offset, pages]: a 100-page run (longer than a 256 KiB group), short ones, one before an earlier one's
      // offset; chunk 3 used by the second lane only, from its middle (the first lane checks its start).
      const layout: [number, number, number][] = [[0, 0, 1], [1, P, 5], [0, 2 * P, 1], [2, 0, 50], [1, 12 * P, 1], [0, 5 * P, 10], [3, 10 * P, 3], [2, 62 * P, 12], [1, 7 * P, 2], [0, 25 * P, 37], [3, 3 * P, 1], [2, 50 * P, 1]];
      const dest = Buffer.alloc(layout.reduce((s, [, , l]) => s + l * P, 0));
      const destAt: number[] = [];
      let d = 0;
      for (const [, , l] of layout) {
        destAt.push(d);
        d += l * P;
      }
      const cols = columns(layout.map(([k, o, l], i) => [k, o, l, Number(libc.address(dest)) + destAt[i]]));
      const chunks = u64s(at.map((a) => base + BigInt(a)));
      const mid = 5;
      // Each chunk's second part starts at its first run of the second lane.
      const split = [0, 1, 2, 3].map((k) => layout.slice(mid).find((p) => p[0] === k)?.[1] ?? CH);
      const lanes = [[0, mid], [mid, layout.length]].map(([from, to], l) => ({
        from, to,
        seg: u64s([0, 1, 2, 3].flatMap((k) => (l === 0 ? [0, split[k], 0] : [split[k], CH, split[k]]))),
        crcs: Buffer.alloc(16),
        out: Buffer.alloc(16),
      }));
      const run = (ln: (typeof lanes)[number], from: number, to: number, finish: number) => g!.run(process.pid, chunks, ln.seg, ln.crcs, 4, cols.base, cols.start, cols.pages, cols.image, cols.chunk, cols.offset, P, from, to, finish, ln.out);
      for (const ln of lanes) {
        // Two calls a lane, the second one finishing: on the pool, then on this thread.
        const cut = ln.from + 2;
        const r1 = await new Promise<number>((resolve, reject) => g!.run.async(process.pid, chunks, ln.seg, ln.crcs, 4, cols.base, cols.start, cols.pages, cols.image, cols.chunk, cols.offset, P, ln.from, cut, 0, ln.out, (err, ret) => (err ? reject(err) : resolve(Number(ret)))));
        expect(r1).toBe(0);
        expect(Number(run(ln, cut, ln.to, 1))).toBe(0);
        expect(Number(ln.out.readBigUInt64LE(0))).toBe(layout.slice(ln.from, ln.to).reduce((s, [, , l]) => s + l * P, 0));
      }
      const out = Buffer.alloc(16);
      g!.combine(lanes[0].crcs, lanes[1].crcs, u64s(split.map((s) => CH - s)), 4, out);
      [0, 1, 2, 3].forEach((k) => expect(out.readUInt32LE(k * 4)).toBe(zlibCrc32(chunk(k)) >>> 0));
      layout.forEach(([k, o, l], i) => expect(dest.subarray(destAt[i], destAt[i] + l * P).equals(chunk(k).subarray(o, o + l * P))).toBe(true));
    } finally {
      unmap(base, data.length);
      closeSync(fd);
    }
  });

  it('a short write is 1 with the bytes written; a file shrunk under the mapping is -EFAULT with its chunk', () => {
    const size = 4 * PIECE;
    const path = join(dir, 'gather-shrinks');
    writeFileSync(path, randomBytes(size));
    const fd = openSync(path, 'r+');
    const base = mapReadOnly(fd, size);
    try {
      const dest = Buffer.alloc(2 * P);
      const chunks = u64s([base, base + BigInt(2 * PIECE)]);
      const seg = () => u64s([0, PIECE, 0, 0, PIECE, 0]);
      const out = Buffer.alloc(16);
      // The second run goes to page 1 of the address space: never mapped.
      const short = columns([[0, 0, 2, Number(libc.address(dest))], [0, 2 * P, 1, P]]);
      expect(Number(g!.run(process.pid, chunks, seg(), Buffer.alloc(8), 2, short.base, short.start, short.pages, short.image, short.chunk, short.offset, P, 0, 2, 1, out))).toBe(1);
      expect(Number(out.readBigUInt64LE(0))).toBe(2 * P);
      ftruncateSync(fd, 3 * PIECE - 2 * P);
      const cols = columns([[0, 0, 1, Number(libc.address(dest))], [1, PIECE - P, 1, Number(libc.address(dest)) + P]]);
      for (let i = 0; i < 2; i++) {
        out.fill(0);
        expect(Number(g!.run(process.pid, chunks, seg(), Buffer.alloc(8), 2, cols.base, cols.start, cols.pages, cols.image, cols.chunk, cols.offset, P, 0, 2, 1, out))).toBe(-14);
        expect(Number(out.readBigUInt64LE(8))).toBe(1);
      }
    } finally {
      unmap(base, size);
      closeSync(fd);
    }
  });
});

/**
 * The post-copy messages' binary part (formats/wire-v2.md, "Post-copy"),
 * and the set of ranges both ends keep of what is still to come.
 *
 * PAGE_DATA payload, little-endian: u64 start address, u32 length (a page
 * multiple), u32 zero, then the bytes of [start, start + length).
 */
import { TsnapError } from '../errors.js';
import { normalize, type Range } from '../image/ranges.js';
import { PAGE_SIZE } from '../sys/uapi.js';

const P = PAGE_SIZE;
export const PAGE_DATA_HEADER = 16;
/** One PAGE_DATA frame carries at most this much (well under the frame limit). */
export const PAGE_DATA_MAX = 1 << 20;

export function encodePageDataHeader(start: number, len: number): Buffer {
  const h = Buffer.alloc(PAGE_DATA_HEADER);
  h.writeBigUInt64LE(BigInt(start), 0);
  h.writeUInt32LE(len, 8);
  return h;
}

export function decodePageData(payload: Buffer): { start: number; data: Buffer } {
  if (payload.length < PAGE_DATA_HEADER) throw new TsnapError('badImage', 'migration stream: PAGE_DATA shorter than its header');
  const start = Number(payload.readBigUInt64LE(0));
  const len = payload.readUInt32LE(8);
  if (start % P || len % P || len === 0 || payload.length !== PAGE_DATA_HEADER + len || !Number.isSafeInteger(start + len)) {
    throw new TsnapError('badImage', `migration stream: PAGE_DATA at 0x${start.toString(16)} of ${len} bytes is not a page range matching its frame`);
  }
  return { start, data: payload.subarray(PAGE_DATA_HEADER) };
}

/** Page-aligned, non-empty, inside user space: the set a peer names. */
export function checkedRanges(pairs: readonly [number, number][], what: string): Range[] {
  const out: Range[] = [];
  for (const [start, end] of pairs) {
    if (start % P || end % P || start >= end) throw new TsnapError('badImage', `migration stream: ${what} range 0x${start.toString(16)}-0x${end.toString(16)} is not a page range`);
    out.push({ start, end });
  }
  return normalize(out);
}

/** Sorted, disjoint ranges still to come, taken from in pieces. */
export class RangeQueue {
  private rs: Range[];

  constructor(rs: readonly Range[]) {
    this.rs = normalize(rs);
  }

  get empty(): boolean {
    return this.rs.length === 0;
  }

  get bytes(): number {
    return this.rs.reduce((n, r) => n + r.end - r.start, 0);
  }

  /** The first part still queued inside `within` (at most `max` bytes), removed; null if none. */
  takeWithin(within: Range, max: number): Range | null {
    for (let i = 0; i < this.rs.length; i++) {
      const r = this.rs[i];
      if (r.end <= within.start) continue;
      if (r.start >= within.end) return null;
      const s = Math.max(r.start, within.start);
      const e = Math.min(r.end, within.end, s + max);
      this.cut(i, s, e);
      return { start: s, end: e };
    }
    return null;
  }

  /** The first part still queued (at most `max` bytes), removed. */
  takeFirst(max: number): Range | null {
    if (!this.rs.length) return null;
    return this.takeWithin({ start: this.rs[0].start, end: this.rs[0].end }, max);
  }

  private cut(i: number, s: number, e: number): void {
    const r = this.rs[i];
    const keep: Range[] = [];
    if (r.start < s) keep.push({ start: r.start, end: s });
    if (e < r.end) keep.push({ start: e, end: r.end });
    this.rs.splice(i, 1, ...keep);
  }
}

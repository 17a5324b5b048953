import { PAGE_SIZE } from '../sys/uapi.js';
/**
 * The pages of one address space still to be filled, as pieces: `len`
 * bytes at `dest` in the process, whose data the page source has at `src`
 * (the address at the dump). They start equal; mremap() moves `dest`,
 * munmap() and MADV_DONTNEED drop pieces, and a fork copies the lot.
 */
const P = PAGE_SIZE;

export interface Piece {
  dest: number;
  src: number;
  len: number;
}

export class Pending {
  /** Sorted by dest, never overlapping. */
  private pieces: Piece[];

  constructor(pieces: Piece[] = []) {
    this.pieces = pieces.filter((p) => p.len > 0).sort((a, b) => a.dest - b.dest);
  }

  get empty(): boolean {
    return this.pieces.length === 0;
  }

  get bytes(): number {
    return this.pieces.reduce((n, p) => n + p.len, 0);
  }

  clone(): Pending {
    return new Pending(this.pieces.map((p) => ({ ...p })));
  }

  /** Both sets in one (they never overlap: a page is pending or in flight). */
  static union(a: Pending, b: Pending): Pending {
    return new Pending([...a.pieces, ...b.pieces].map((p) => ({ ...p })));
  }

  /** Whether the page of `addr` is in this set. */
  has(addr: number): boolean {
    const p = this.pieces[this.at(addr)];
    return !!p && p.dest <= addr;
  }

  /** Removes and returns every piece whose data lies in [src, src+len) (moved or not since). */
  takeBySrc(src: number, len: number): Piece[] {
    const out: Piece[] = [];
    this.pieces = this.pieces.filter((p) => {
      const inside = p.src >= src && p.src + p.len <= src + len;
      if (inside) out.push(p);
      return !inside;
    });
    return out;
  }

  toJSON(): [number, number, number][] {
    return this.pieces.map((p) => [p.dest, p.src, p.len]);
  }

  static fromJSON(a: [number, number, number][]): Pending {
    return new Pending(a.map(([dest, src, len]) => ({ dest, src, len })));
  }

  /** Index of the first piece ending after `addr`. */
  private at(addr: number): number {
    let lo = 0;
    let hi = this.pieces.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const p = this.pieces[mid];
      if (p.dest + p.len <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * Takes up to `max` bytes from the page of `addr` on, within its piece;
   * null when no piece holds that page (filled already, or never stored).
   */
  claim(addr: number, max: number): Piece | null {
    const page = addr - (addr % P);
    const i = this.at(page);
    const p = this.pieces[i];
    if (!p || p.dest > page) return null;
    const end = Math.min(p.dest + p.len, page + max);
    const out = { dest: page, src: p.src + (page - p.dest), len: end - page };
    const rest: Piece[] = [];
    if (p.dest < page) rest.push({ dest: p.dest, src: p.src, len: page - p.dest });
    if (end < p.dest + p.len) rest.push({ dest: end, src: p.src + (end - p.dest), len: p.dest + p.len - end });
    this.pieces.splice(i, 1, ...rest);
    return out;
  }

  /** The lowest pending pages, up to `max` bytes of one piece (background fill: address order). */
  claimFirst(max: number): Piece | null {
    const p = this.pieces[0];
    return p ? this.claim(p.dest, max) : null;
  }

  /** Gives back what a fill could not place yet (the address space was changing). */
  unclaim(p: Piece): void {
    if (p.len <= 0) return;
    this.cut(p.dest, p.dest + p.len);
    this.pieces.splice(this.at(p.dest), 0, { ...p });
  }

  /** Forgets [start, end): unmapped, or emptied by MADV_DONTNEED (it reads zero now, not the image). */
  cut(start: number, end: number): Piece[] {
    const removed: Piece[] = [];
    const out: Piece[] = [];
    const first = this.at(start);
    let i = first;
    while (i < this.pieces.length && this.pieces[i].dest < end) {
      const p = this.pieces[i];
      const pEnd = p.dest + p.len;
      if (p.dest < start) out.push({ dest: p.dest, src: p.src, len: start - p.dest });
      const s = Math.max(start, p.dest);
      const e = Math.min(end, pEnd);
      removed.push({ dest: s, src: p.src + (s - p.dest), len: e - s });
      if (pEnd > end) out.push({ dest: end, src: p.src + (end - p.dest), len: pEnd - end });
      i++;
    }
    this.pieces.splice(first, i - first, ...out);
    return removed;
  }

  /** mremap() moved [from, from+len) to `to`: its pending pages follow it. */
  move(from: number, to: number, len: number): void {
    const moved = this.cut(from, from + len);
    this.cut(to, to + len);
    for (const p of moved) this.unclaim({ dest: p.dest - from + to, src: p.src, len: p.len });
  }
}

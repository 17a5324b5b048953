/**
 * The copy of a copy-on-write dump unprotects what it has read, chunk by
 * chunk (1 MiB), in address order. A chunk ends where it ends, often in
 * the middle of a transparent huge page; unprotecting part of a huge page
 * makes the kernel split its PMD into 512 page-table entries. Unprotected
 * so, every huge page of the target was split by its first copy-on-write
 * dump (thp_split_pmd +512 per GiB, docs/performance.md), so each later
 * dump walked 4 KiB entries frozen (the scan: 4-6 ms per GiB instead of
 * 0.5) and the target lost its huge pages until khugepaged collapsed them
 * again, slowly (a few per 10 s here), with the mmap lock held in write
 * mode each time.
 *
 * So the part of a read that ends inside a 2 MiB-aligned block is held
 * protected until the copy has read the rest of that block (the next
 * contiguous read), or until the reads stop being contiguous (a gap:
 * pages not present at the freeze, so that block is not one huge page)
 * or end. Holding a page protected a little longer only delays its
 * unprotection: a write there meanwhile faults, and the fault server sees
 * it behind the cursor and only wakes it. Where memory is 4 KiB pages, a
 * block is unprotected at most one chunk later than before.
 */
import { HUGE_PAGE } from './cow-shared.js';

export class AlignedUnprotect {
  private from = -1;
  private to = -1;

  /** `unprotect(start, len)` does the ioctl (and deals with its errors). */
  constructor(private readonly unprotect: (start: number, len: number) => void) {}

  /** [start, start + len) has been read (called in address order). */
  read(start: number, len: number): void {
    if (len <= 0) return;
    if (this.to !== start) {
      this.flush();
      this.from = start;
    }
    this.to = start + len;
    const cut = Math.floor(this.to / HUGE_PAGE) * HUGE_PAGE;
    if (cut > this.from) {
      this.unprotect(this.from, cut - this.from);
      this.from = cut;
    }
    if (this.from === this.to) this.from = this.to = -1;
  }

  /** Unprotects what is held (the reads end, or a gap comes). */
  flush(): void {
    if (this.from >= 0 && this.to > this.from) this.unprotect(this.from, this.to - this.from);
    this.from = this.to = -1;
  }
}

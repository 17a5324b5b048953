/**
 * Guard regions (madvise MADV_GUARD_INSTALL, 6.13+): pages of a mapping
 * that fault on any access, kept as page-table markers rather than VMAs, so
 * /proc/PID/maps does not show them. PAGEMAP_SCAN reports them (6.16+,
 * PAGE_IS_GUARD); each VMA's image lists its guarded ranges and restore
 * installs them again. On a kernel whose scan does not know guards there is
 * no way to see them from outside: nothing is recorded (as before).
 */
import { Pagemap, PAGE_IS, scanKnowsGuard } from '../sys/index.js';
import type { VmaImage } from '../../formats/schema.js';

type Span = [number, number];

const userVmas = (images: readonly VmaImage[]) => images.filter((v) => !v.special || v.special === 'heap' || v.special === 'stack');

/** Guarded page ranges between the first and the last user VMA, touching ones joined. */
export function scanGuards(pagemap: Pagemap, images: readonly VmaImage[]): Span[] {
  const user = userVmas(images);
  if (!scanKnowsGuard() || user.length === 0) return [];
  const out: Span[] = [];
  for (const batch of pagemap.scan({ start: user[0].start, end: user[user.length - 1].end, categoryMask: PAGE_IS.GUARD, returnMask: PAGE_IS.GUARD })) {
    for (const r of batch) join(out, [r.start, r.end]);
  }
  return out;
}

function join(out: Span[], s: Span): void {
  const last = out[out.length - 1];
  if (last && last[1] === s[0]) last[1] = s[1];
  else out.push([s[0], s[1]]);
}

/** Sets `guards` on each VMA image that has guard pages, split at VMA ends. `images` sorted by address. */
export function recordGuards(pagemap: Pagemap, images: VmaImage[]): void {
  const user = userVmas(images);
  let vi = 0;
  for (const [start, end] of scanGuards(pagemap, images)) {
    let s = start;
    while (s < end && vi < user.length) {
      const v = user[vi];
      if (v.end <= s) { vi++; continue; }
      if (v.start >= end) break;
      const to = Math.min(end, v.end);
      (v.guards ??= []).push([Math.max(s, v.start), to]);
      s = to;
    }
  }
}

/** What an image's VMAs say is guarded, touching ranges joined (to compare with scanGuards). */
export function imageGuards(images: readonly VmaImage[]): Span[] {
  const out: Span[] = [];
  for (const v of images) for (const g of v.guards ?? []) join(out, g);
  return out;
}

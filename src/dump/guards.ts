/**
 * Guard regions (madvise MADV_GUARD_INSTALL, 6.13+): pages of a mapping
 * that fault on any access, kept as page-table markers rather than VMAs, so
 * /proc/PID/maps does not show them. PAGEMAP_SCAN reports them (6.16+,
 * PAGE_IS_GUARD); each VMA's image lists its guarded ranges and restore
 * installs them again. On a kernel whose scan does not know guards there is
 * no way to see them from outside: nothing is recorded (as before).
 */
import { Pagemap, PAGE_IS, scanKnowsGuard } from '../sys/index.js';
import { specialOf } from './memory-plan.js';
import type { Vma } from '../proc/maps.js';
import type { VmaImage } from '../../formats/schema.js';

type Span = [number, number];

/** Guards read over [start, end) earlier (dump/early-scan.ts), to be taken when the freeze finds them still valid. */
export interface GuardsRead {
  start: number;
  end: number;
  spans: Span[];
}

const isUser = (special: VmaImage['special']) => !special || special === 'heap' || special === 'stack';
const userVmas = (images: readonly VmaImage[]) => images.filter((v) => isUser(v.special));

/** From the first to the last user VMA of a maps read. */
export function userSpan(vmas: readonly Vma[]): { start: number; end: number } | null {
  const user = vmas.filter((v) => isUser(specialOf(v)));
  return user.length ? { start: user[0].start, end: user[user.length - 1].end } : null;
}

/** Guarded page ranges in [start, end), touching ones joined. */
export function scanGuardSpan(pagemap: Pagemap, start: number, end: number): Span[] {
  if (!scanKnowsGuard()) return [];
  const out: Span[] = [];
  for (const batch of pagemap.scan({ start, end, categoryMask: PAGE_IS.GUARD, returnMask: PAGE_IS.GUARD })) {
    for (const r of batch) join(out, [r.start, r.end]);
  }
  return out;
}

/**
 * Guarded page ranges between the first and the last user VMA, touching
 * ones joined: from `early` when it covered that span (the caller has
 * proved nothing installed or removed a guard since), else scanned now.
 */
export function scanGuards(pagemap: Pagemap, images: readonly VmaImage[], early: GuardsRead | null = null): Span[] {
  const user = userVmas(images);
  if (!scanKnowsGuard() || user.length === 0) return [];
  const start = user[0].start;
  const end = user[user.length - 1].end;
  if (early && early.start <= start && early.end >= end) {
    return early.spans.filter(([s, e]) => e > start && s < end).map(([s, e]): Span => [Math.max(s, start), Math.min(e, end)]);
  }
  return scanGuardSpan(pagemap, start, end);
}

function join(out: Span[], s: Span): void {
  const last = out[out.length - 1];
  if (last && last[1] === s[0]) last[1] = s[1];
  else out.push([s[0], s[1]]);
}

/** Sets `guards` on each VMA image that has guard pages, split at VMA ends. `images` sorted by address. */
export function recordGuards(pagemap: Pagemap, images: VmaImage[], early: GuardsRead | null = null): void {
  const user = userVmas(images);
  let vi = 0;
  for (const [start, end] of scanGuards(pagemap, images, early)) {
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

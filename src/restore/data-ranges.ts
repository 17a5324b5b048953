/**
 * Which VMAs the restore writes pages into. A VMA that gets none needs no
 * write permission on the way: it is mapped with its final protection at
 * once, which saves the mprotect() after the pages (5 000 of them for the
 * read-only half of a 10 000-VMA process) and the kernel's split of the
 * writable neighbours it had merged with.
 */
import type { ResolvedRun, ResolvedTable } from '../image/chain-index.js';
import { PAGE_SIZE } from '../sys/uapi.js';

/** `resolved`: sorted by address, as resolveChain returns them. */
export function receivesPages(resolved: readonly ResolvedRun[] | ResolvedTable): (v: { start: number; end: number }) => boolean {
  if (!Array.isArray(resolved)) return receivesPagesOf(resolved as ResolvedTable);
  const runs = resolved as readonly ResolvedRun[];
  return receivesPagesOf({ length: runs.length, start: Float64Array.from(runs, (r) => r.start), pages: Float64Array.from(runs, (r) => r.pages) });
}

function receivesPagesOf(resolved: Pick<ResolvedTable, 'length' | 'start' | 'pages'>): (v: { start: number; end: number }) => boolean {
  const { start, pages } = resolved;
  return (v) => {
    // The first run ending after v.start: it overlaps v when it starts before v.end.
    let lo = 0;
    let hi = resolved.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (start[mid] + pages[mid] * PAGE_SIZE <= v.start) lo = mid + 1;
      else hi = mid;
    }
    return lo < resolved.length && start[lo] < v.end;
  };
}

/**
 * A streamed round's LAYOUT against the round's own image. The live build
 * follows LAYOUT (what to map, what to drop, whether the round is a delta)
 * while the chain on disk follows the image; a LAYOUT that says otherwise
 * would leave the process built here different from the image kept for
 * it, with nothing to notice it later (the final check compares shapes,
 * not pages). A real sender derives both from one scan, so any difference
 * is a corrupted or hostile stream.
 */
import { normalize, type Range } from '../image/ranges.js';
import { isSpecial } from '../restore/layout-plan.js';
import { identity } from './live-build.js';
import { PageWhere, type VmaImage } from '../../formats/schema.js';
import type { Image } from '../image/image-reader.js';
import { PAGE_SIZE } from '../sys/uapi.js';

export interface SentLayout {
  vmas: readonly VmaImage[];
  zero: readonly Range[];
  incremental: boolean;
}

const hex = (n: number) => `0x${n.toString(16)}`;

/** What differs between the LAYOUT and the image of the same round, or null. */
export function layoutMismatch(sent: SentLayout, img: Image): string | null {
  const delta = img.inventory.kind === 'delta';
  if (sent.incremental !== delta) return `LAYOUT says the round is ${sent.incremental ? 'a delta' : 'full'}, its image is ${delta ? 'a delta' : 'full'}`;
  const zeroRuns = normalize(img.pagemap.runs.filter((r) => r.where === PageWhere.Zero).map((r) => ({ start: r.start, end: r.start + r.pages * PAGE_SIZE })));
  const zero = normalize([...sent.zero]);
  const zi = firstDifference(zero, zeroRuns, (a, b) => a.start === b.start && a.end === b.end);
  if (zi >= 0) {
    const say = (r: Range | undefined) => (r ? `${hex(r.start)}-${hex(r.end)}` : 'nothing');
    return `LAYOUT drops ${say(zero[zi])} where the image's zero runs have ${say(zeroRuns[zi])}`;
  }
  const want = (img.pagemap.vmas ?? []).filter((v) => !isSpecial(v));
  const got = sent.vmas.filter((v) => !isSpecial(v));
  const vi = firstDifference(got, want, (a, b) => a.start === b.start && a.end === b.end && a.dumped === b.dumped && identity(a) === identity(b));
  if (vi >= 0) {
    const say = (v: VmaImage | undefined) => (v ? `${hex(v.start)}-${hex(v.end)} ${v.path || '[anon]'}` : 'nothing');
    return `LAYOUT maps ${say(got[vi])} where the image has ${say(want[vi])}`;
  }
  return null;
}

function firstDifference<T>(a: readonly T[], b: readonly T[], same: (x: T, y: T) => boolean): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (i >= a.length || i >= b.length || !same(a[i], b[i])) return i;
  }
  return -1;
}

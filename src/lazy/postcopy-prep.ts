/**
 * Post-copy on the receiver: the process built while the rounds arrived
 * holds every page, but those of the post-copy set in an older version. A
 * MISSING registration only fires on absent pages, so the set is dropped
 * (MADV_DONTNEED, all ranges in one syscall list: postcopy-drop.ts) before the lazy restore
 * registers its VMAs. Not right before the registration: that comes after
 * restore blocks every signal, from when on an int3 (the syscall list's
 * end) would reset a SIGTRAP handler the program has (see
 * requeueSignals). The lazy restore's repair scan (lazy-restore.ts) then
 * finds any page of the set present again by the registration. The pages
 * the kernel itself writes during the restore (rseq areas, see
 * lazy-restore.ts) cannot wait for the pager and are fetched from the
 * source and written now instead.
 */
import { mark } from '../trace.js';
import type { RemoteBatch } from '../inject/remote-batch.js';
import { dropList } from './postcopy-drop.js';
import { TsnapError } from '../errors.js';
import { intersect, normalize, subtract, type Range } from '../image/ranges.js';
import { isLazyVma, kernelTouched } from './lazy-restore.js';
import type { RemoteTask } from '../inject/remote-task.js';
import type { PageSource } from './page-source.js';
import type { ThreadImage, VmaImage } from '../../formats/schema.js';

export interface PostcopyPlan {
  /** The VMAs to register (those the set touches). */
  vmas: VmaImage[];
  /** What of them the restore wrote (skipped by the pager). */
  written: Range[];
}

/** Which VMAs are lazy for `set`; refuses a set outside lazy memory (a bad peer). */
export function postcopyVmas(dumped: readonly VmaImage[], set: readonly Range[]): VmaImage[] {
  const lazy = dumped.filter(isLazyVma);
  const outside = subtract(normalize(set), normalize(lazy.map((v) => ({ start: v.start, end: v.end }))));
  if (outside.length) throw new TsnapError('badImage', `the post-copy set names 0x${outside[0].start.toString(16)}, which is not memory a lazy restore can fill`);
  return lazy.filter((v) => set.some((r) => r.start < v.end && v.start < r.end));
}

/**
 * Drops the set's stale pages from the live process and writes the
 * kernel-touched ones from the source. `open`: makes the task's uffd with
 * the calls of a list run first (LazyRestore.open): the drops go in it.
 */
export async function preparePostcopy(rt: RemoteTask, dumped: readonly VmaImage[], threads: readonly ThreadImage[], set: readonly Range[], source: PageSource, open: (vmas: VmaImage[], batch: RemoteBatch) => void): Promise<PostcopyPlan> {
  const vmas = postcopyVmas(dumped, set);
  const touched = intersect(kernelTouched(threads, vmas), normalize(set));
  const drop = subtract(normalize(set), touched);
  mark(`postcopy: drop ${drop.length} ranges and make the uffd`);
  open(vmas, dropList(rt, drop));
  mark(`postcopy: fetch ${touched.length} kernel-touched ranges`);
  for (const r of touched) {
    const data = (await source.fetch(r.start, r.end - r.start)) ?? Buffer.alloc(r.end - r.start);
    rt.mem.write(data, 0, data.length, r.start);
  }
  mark('postcopy: prepared');
  return { vmas, written: touched };
}

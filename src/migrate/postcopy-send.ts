/**
 * `tsnap migrate --postcopy`, the sender's end after the commit: the source
 * stays frozen and serves the pages its final round left out
 * (postcopy-source.ts) until the receiver says POSTCOPY_DONE; only then is
 * it killed.
 *
 * Which pages are left out: those the final round would have sent that a
 * lazy restore can fill (private anonymous memory, lazy-restore.ts); the
 * rest goes in the final round as before.
 *
 * After the resume the process's newest memory is split between the two
 * hosts. Should the connection fail before every page is in, neither copy
 * is whole: the receiver's copy is killed by its guard, and the source is
 * killed too rather than resumed, since the copy on the receiver has run
 * and may have had effects outside (network, files) that the source would
 * then contradict. That is post-copy's known risk (docs/migration.md).
 * A restore that fails on the receiver before its process ran is the one
 * case where the source resumes. A tsnap killed during the service takes
 * the source with it (the guardian's KILL_ON_EXIT), never resumes it.
 */
import type { Socket } from 'node:net';
import { FrameReader, Msg } from './wire.js';
import { servePages, newServeResult } from './postcopy-source.js';
import { isLazyVma, kernelTouched } from '../lazy/lazy-restore.js';
import { untrackPid } from '../track/untrack.js';
import { TsnapError } from '../errors.js';
import { Guardian } from '../sys/index.js';
import type { FrozenSet } from '../freeze/frozen-set.js';
import type { MigrateOptions, PostcopyFigures } from './sender.js';
import { normalize, intersect, subtract, type Range } from '../image/ranges.js';
import type { VmaImage, ThreadImage } from '../../formats/schema.js';
import { PAGE_SIZE } from '../sys/uapi.js';

const P = PAGE_SIZE;

/** The post-copy migration failed after the receiver may have started the process: it is lost. */
export class PostcopyLost extends TsnapError {}

export function pagesOf(rs: readonly Range[]): number {
  return rs.reduce((n, r) => n + (r.end - r.start) / P, 0);
}

/**
 * The receiver drops the set's stale pages before the resume, all ranges
 * in one syscall list (lazy/postcopy-prep.ts): a range costs it a syscall
 * inside the task (~1 us), a page the kernel's freeing (~0.2 us) and then
 * its transfer and UFFDIO_COPY after the resume. So only gaps of a page or
 * two are closed, and the smallest others only past MAX_RANGES (one
 * syscall list's worth). When each range was its own remote madvise
 * (~0.25 ms), the set was coarsened to 512 ranges, which at 100 MB/s
 * doubled it (25 000 dirty pages became ~50 000 to drop and send).
 */
const CLOSE_GAP = 8 << 10;
const MAX_RANGES = 8192;

/** The final round's dump options for post-copy: which memory it leaves out. */
export function postcopyFinal(on: boolean): { leaveOut?: (vmas: readonly VmaImage[], selected: Range[], threads: readonly ThreadImage[]) => Range[] } {
  return on ? {
    leaveOut: (vmas, selected, threads) => {
      const lazyVmas = vmas.filter(isLazyVma);
      const lazy = normalize(lazyVmas.map((v) => ({ start: v.start, end: v.end })));
      // The pages the kernel writes during the receiver's restore (rseq
      // areas) go in the final round: fetched after it, they would cost the
      // resume a round trip.
      return subtract(coarsen(intersect(selected, lazy), lazy, MAX_RANGES, CLOSE_GAP), kernelTouched(threads, lazyVmas));
    },
  } : {};
}

/**
 * `set` with its gaps of at most `gap` bytes closed, and then its smallest
 * others until at most `max` ranges remain (inside `within` only). Any
 * page of the frozen source can be served: a gap closed costs its pages'
 * transfer after the resume, and saves the receiver a remote syscall
 * before it.
 */
export function coarsen(set: readonly Range[], within: readonly Range[], max: number, gap = 0): Range[] {
  const rs = normalize(set).map((r) => ({ ...r }));
  // Gaps that lie wholly inside `within`, smallest first.
  const gaps: { i: number; len: number }[] = [];
  for (let i = 0; i + 1 < rs.length; i++) {
    const g = { start: rs[i].end, end: rs[i + 1].start };
    if (subtract([g], within).length === 0) gaps.push({ i, len: g.end - g.start });
  }
  gaps.sort((a, b) => a.len - b.len);
  let n = 0;
  while (n < gaps.length && (gaps[n].len <= gap || rs.length - n > max)) n++;
  const closed = new Set(gaps.slice(0, n).map((g) => g.i));
  const out: Range[] = [];
  for (let i = 0; i < rs.length; i++) {
    if (i > 0 && closed.has(i - 1)) out[out.length - 1].end = rs[i].end;
    else out.push(rs[i]);
  }
  return out;
}

export async function finishPostcopy(sock: Socket, reader: FrameReader, opts: MigrateOptions, held: FrozenSet, set: Range[], frozenAt: bigint, freezeToCommitMs: number, because: string): Promise<{ downtimeMs: number; restoredPid: number | null; restoreError: string | null; bytes: number; figures: PostcopyFigures }> {
  const since = () => Number(process.hrtime.bigint() - frozenAt) / 1e6;
  let downtimeMs = 0;
  let restoredPid: number | null = null;
  const served = newServeResult();
  // From here on the receiver may run the process: a tsnap killed now must
  // not leave the guardian to resume the source as well.
  for (const proc of held.processes) for (const t of proc.tasks) if (t.tracer === 'guarded') Guardian.get().killOnExit(t.pid);
  try {
    await servePages(sock, reader, opts.pid, set, {
      bandwidthLimit: opts.bandwidthLimit,
      onReply: (f) => {
        if (f.type !== Msg.Restored) return;
        downtimeMs = since();
        // The receiver's clock, when it says (see sender.ts): the tighter upper bound.
        if (typeof f.doc.sinceCommitUs === 'number') downtimeMs = Math.min(downtimeMs, freezeToCommitMs + f.doc.sinceCommitUs / 1000);
        restoredPid = f.doc.pid as number;
        opts.onEvent?.({ event: 'resumed', pid: restoredPid, downtimeMs: +downtimeMs.toFixed(1), pagesLeft: pagesOf(set) });
      },
    }, served);
  } catch (err) {
    held.finish('kill');
    const pages = pagesOf(set);
    const why = `post-copy failed after the resume (${(err as Error).message})`;
    const source = 'the source was killed: resuming it would contradict what the receiver\'s copy did';
    const message = served.allSent
      ? `${why}: every one of the ${pages} pages served after the resume was sent, but the receiver did not confirm it has them all; its copy of process ${opts.pid} runs on only if it got them (its guard kills it otherwise); ${source}`
      : `${why}: ${pages - served.pagesPushed - served.pagesRequested} of the ${pages} pages process ${opts.pid} wrote in its last round never left the source; the process is lost (the receiver's copy is killed by its guard; ${source})`;
    opts.onEvent?.({ event: 'postcopy-failed', message });
    throw new PostcopyLost('targetFailed', message, err);
  }
  const bytes = (served.pagesPushed + served.pagesRequested) * P;
  if (served.restoreFailed !== null) {
    // Its process never ran there: the source goes on as it was.
    held.release();
    untrackPid(opts.pid);
    opts.onEvent?.({ event: 'postcopy-abandoned', message: served.restoreFailed, source: 'resumed' });
    return { downtimeMs: since(), restoredPid: null, restoreError: served.restoreFailed, bytes, figures: figures() };
  }
  held.finish('kill');
  const allInMs = since();
  opts.onEvent?.({ event: 'postcopy-done', allInMs: +allInMs.toFixed(1), pagesRequested: served.pagesRequested, pagesPushed: served.pagesPushed, source: 'killed' });
  return { downtimeMs, restoredPid, restoreError: null, bytes, figures: { ...figures(), allInMs } };

  function figures(): PostcopyFigures {
    return { because, pages: pagesOf(set), pagesRequested: served.pagesRequested, pagesPushed: served.pagesPushed, requests: served.requests, allInMs: 0 };
  }
}

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
import { readReg } from '../freeze/frozen-task.js';

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

/** At most this many pages of the threads' own (hotPages) go in the final round. */
const MAX_HOT_PAGES = 256;

/**
 * The pages every thread touches first when it runs again, as ranges in
 * the order they matter: the page of its stack pointer (the frames it
 * returns through, and the red zone below), then the page of its thread
 * pointer (fs_base: the TCB, with errno and the static TLS just below it),
 * then the neighbours of both. A frozen thread written in its last round
 * had those pages in the set, and each was the thread's first fault after
 * the resume: a round trip over the link (and on a busy host one wake-up
 * of the sender and one of the receiver each) before the thread could do
 * anything at all (bench/migration.ts: a 5 ms ticker's first tick came
 * 11-55 ms after the resume, waiting for its stack page).
 */
export function hotPages(threads: readonly ThreadImage[]): Range[] {
  const page = (a: bigint) => Number(a - (a % BigInt(P)));
  const tiers: Range[][] = [[], [], []];
  for (const t of threads) {
    const sp = page(readReg(t.regs, 'rsp'));
    const tp = page(readReg(t.regs, 'fs_base'));
    tiers[0].push({ start: sp, end: sp + P });
    if (tp > 0) tiers[1].push({ start: tp, end: tp + P });
    tiers[2].push({ start: sp + P, end: sp + 2 * P }, { start: sp - P, end: sp });
    if (tp > P) tiers[2].push({ start: tp - P, end: tp });
  }
  return tiers.flat();
}

/** `hot` (in order) that lies in `set` (sorted, disjoint), up to `max` pages. */
export function takeHot(hot: readonly Range[], set: readonly Range[], max: number): Range[] {
  const out: Range[] = [];
  let n = 0;
  for (const h of hot) {
    // The first range of the set ending after h.start.
    let lo = 0;
    let hi = set.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (set[mid].end <= h.start) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < set.length && set[i].start < h.end; i++) {
      const s = Math.max(h.start, set[i].start);
      const e = Math.min(h.end, set[i].end, s + (max - n) * P);
      if (e <= s) break;
      out.push({ start: s, end: e });
      n += (e - s) / P;
    }
    if (n >= max) break;
  }
  return normalize(out);
}

/**
 * The pages of `written` (the final round's) that the two rounds before
 * wrote too: what a program writes all the time (a thread's data, a
 * counter, a buffer it reuses), and so writes again right after the
 * resume. A writer of random pages has next to none of its pages in three
 * rounds running (at 100 MB/s over 4 GiB: a handful), so these are few.
 */
export function rewrittenPages(written: readonly Range[], recent: readonly Range[][]): Range[] {
  if (recent.length < 2) return [];
  return intersect(intersect(written, recent[0]), recent[1]);
}

/** The final round's dump options for post-copy: which memory it leaves out. */
export function postcopyFinal(on: boolean): { leaveOut?: (vmas: readonly VmaImage[], selected: Range[], threads: readonly ThreadImage[], recent: readonly Range[][]) => Range[] } {
  return on ? {
    leaveOut: (vmas, selected, threads, recent) => {
      const lazyVmas = vmas.filter(isLazyVma);
      const lazy = normalize(lazyVmas.map((v) => ({ start: v.start, end: v.end })));
      // The pages the kernel writes during the receiver's restore (rseq
      // areas) go in the final round: fetched after it, they would cost the
      // resume a round trip. So do the threads' own first pages (hotPages),
      // and then the pages the process writes round after round.
      const written = intersect(selected, lazy);
      const keep = normalize([...kernelTouched(threads, lazyVmas), ...takeHot([...hotPages(threads), ...rewrittenPages(written, recent)], written, MAX_HOT_PAGES)]);
      // Each range kept out may split one of the set in two: room for that within the bound.
      return subtract(coarsen(written, lazy, Math.max(1, MAX_RANGES - keep.length), CLOSE_GAP), keep);
    },
  } : {};
}

/**
 * `set` with its gaps of at most `gap` bytes closed, and then its smallest
 * others until at most `max` ranges remain (inside `within` only). Any
 * page of the frozen source can be served: a gap closed costs its pages'
 * transfer after the resume, and saves the receiver a remote syscall
 * before it.
 *
 * It runs frozen, over the whole last delta (25 000 ranges at 100 MB/s
 * and 4 GiB): one pass for the gaps, a numeric sort of the lengths only
 * when the bound must close more than the small ones. Sorting objects and
 * a subtract() per gap took 10-45 ms there.
 */
export function coarsen(set: readonly Range[], within: readonly Range[], max: number, gap = 0): Range[] {
  // Sorted and disjoint already (an intersect()'s output): taken as it is, no copy (nothing here mutates it).
  const rs = isNormal(set) ? set : normalize(set);
  const w = normalize(within);
  const n = rs.length;
  if (n < 2) return [...rs];
  // close[i]: the gap after rs[i] is closed. len[i]: its length, -1 if it is not wholly inside `within`.
  const close = new Uint8Array(n - 1);
  const len = new Float64Array(n - 1);
  let j = 0;
  let ranges = n;
  let candidates = 0;
  for (let i = 0; i + 1 < n; i++) {
    const s = rs[i].end;
    const e = rs[i + 1].start;
    while (j < w.length && w[j].end <= s) j++;
    const inside = j < w.length && w[j].start <= s && e <= w[j].end;
    len[i] = inside ? e - s : -1;
    if (!inside) continue;
    if (e - s <= gap) { close[i] = 1; ranges--; } else candidates++;
  }
  const need = ranges - max;
  if (need > 0 && candidates > 0) {
    // The need-th smallest length of the gaps still open: those under it all close, ties in address order.
    const open = new Float64Array(candidates);
    let k = 0;
    for (let i = 0; i + 1 < n; i++) if (len[i] >= 0 && !close[i]) open[k++] = len[i];
    open.sort();
    const take = Math.min(need, candidates);
    const limit = open[take - 1];
    let atLimit = take - open.findIndex((x) => x === limit);
    for (let i = 0; i + 1 < n; i++) {
      if (len[i] < 0 || close[i] || len[i] > limit) continue;
      if (len[i] === limit) { if (atLimit === 0) continue; atLimit--; }
      close[i] = 1;
    }
  }
  const out: Range[] = [];
  let from = rs[0].start;
  for (let i = 0; i < n; i++) {
    if (i + 1 < n && close[i]) continue;
    out.push(from === rs[i].start ? rs[i] : { start: from, end: rs[i].end });
    if (i + 1 < n) from = rs[i + 1].start;
  }
  return out;
}

function isNormal(rs: readonly Range[]): boolean {
  for (let i = 0; i < rs.length; i++) {
    if (rs[i].end <= rs[i].start || (i > 0 && rs[i].start <= rs[i - 1].end)) return false;
  }
  return true;
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

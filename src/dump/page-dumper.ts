/**
 * Copies the selected pages of a frozen process into a page sink (the
 * pages file, or a migration's connection).
 *
 * Pages are packed into chunk buffers in address order. A chunk is filled by
 * one process_vm_readv (up to 1024 remote ranges per call, all into one
 * local iovec); pages the mapping does not let us read (PROT_NONE or
 * write-only memory that still holds data) come through /proc/PID/mem. The
 * index entry for each run of pages is recorded as the chunk fills.
 */
import { VmCopier, ProcMem, Pagemap, PROT_READ, type RemoteRange } from '../sys/index.js';
import type { Vma } from '../proc/maps.js';
import type { PageSink } from './page-sink.js';
import { PageWhere, type PageRun } from '../../formats/schema.js';
import { RangeSelector, SCAN_ANYOF, SCAN_RETURN, SCAN_NOT_GUARD, type VmaClass, type DumpRange } from './memory-plan.js';
import { sharedAnonRanges } from './shared-memory.js';
import { PAGE_SIZE } from '../sys/uapi.js';

const PAGE = PAGE_SIZE;

export interface PageDumpResult {
  runs: PageRun[];
  pagesWritten: number;
  pagesSlowPath: number;
}

export interface Pending {
  start: number;
  len: number;
  readable: boolean;
}

export interface CopyOptions {
  onProgress?: (bytes: number) => void;
  /**
   * For a target that keeps running (pre-dump): a range that can no longer
   * be read (unmapped meanwhile) is zero-filled and reported here instead of
   * failing the dump, so the caller can make sure it is copied again.
   */
  onVanished?: (start: number, len: number) => void;
  /**
   * Called with each chunk once read, before it is queued: `read` lists the
   * ranges it holds, back to back from byte 0 (copy-on-write dumps replace
   * pages saved from a fault and unprotect the ranges here).
   */
  afterRead?: (buf: Buffer, read: readonly { start: number; len: number }[]) => void;
}

/** Pages of `vmas` to store in a full dump: one PAGEMAP_SCAN over the whole space. */
export function* fullSelection(pagemap: Pagemap, vmas: readonly Vma[], classes: readonly VmaClass[]): Generator<DumpRange> {
  const dumped = vmas.filter((_, i) => classes[i] !== 'notDumped');
  if (!dumped.length) return;
  const selector = new RangeSelector(vmas, classes);
  // Shared anonymous memory comes from its object, merged in address order.
  const shared = sharedAnonRanges(pagemap.pid, vmas, classes);
  let si = 0;
  for (const batch of pagemap.scan({ start: dumped[0].start, end: dumped[dumped.length - 1].end, categoryMask: SCAN_NOT_GUARD, categoryInverted: SCAN_NOT_GUARD, categoryAnyof: SCAN_ANYOF, returnMask: SCAN_RETURN })) {
    for (const r of selector.select(batch)) {
      while (si < shared.length && shared[si].start < r.start) yield shared[si++];
      yield r;
    }
  }
  while (si < shared.length) yield shared[si++];
}

/**
 * Copies the selected ranges (sorted by address) into the pages file and
 * returns the page index entries for them.
 */
export async function copyPages(
  pid: number,
  vmas: readonly Vma[],
  selection: Iterable<DumpRange>,
  writer: PageSink,
  mem: ProcMem,
  opts: CopyOptions = {},
): Promise<PageDumpResult> {
  const copier = new VmCopier(pid);
  const runs: PageRun[] = [];
  let pagesWritten = 0;
  let pagesSlowPath = 0;
  const chunkPages = writer.chunkSize / PAGE;

  let buf: Buffer | null = null;
  let fill = 0; // pages in the current chunk
  let pending: Pending[] = [];
  let chunkRunsFrom = 0; // runs[chunkRunsFrom..] lie in the chunk being filled

  const flush = () => {
    if (!buf || fill === 0) return;
    pagesSlowPath += readInto(copier, mem, buf, pending, opts.onVanished);
    opts.afterRead?.(buf, pending);
    writer.submit(buf, fill * PAGE, runs.slice(chunkRunsFrom));
    chunkRunsFrom = runs.length;
    pagesWritten += fill;
    opts.onProgress?.(fill * PAGE);
    buf = null;
    fill = 0;
    pending = [];
  };

  const firstChunk = writer.chunks.length;
  for (const pl of placePages(selection, chunkPages)) {
    if (!buf) buf = await writer.acquire();
    const readable = (vmas[pl.vma].prot & PROT_READ) !== 0;
    addRun(runs, { start: pl.start, pages: pl.pages, where: PageWhere.Here, chunk: firstChunk + pl.chunk, offset: pl.offset * PAGE });
    const p = pending[pending.length - 1];
    if (p && p.readable === readable && p.start + p.len === pl.start) p.len += pl.pages * PAGE;
    else pending.push({ start: pl.start, len: pl.pages * PAGE, readable });
    fill += pl.pages;
    if (fill === chunkPages) flush();
  }
  flush();
  return { runs, pagesWritten, pagesSlowPath };
}

/** Where some selected pages go: page `offset` of chunk `chunk` (counted from this image's first). */
export interface Placement {
  start: number;
  pages: number;
  vma: number;
  chunk: number;
  offset: number;
}

/**
 * Lays the selection out in chunks of `chunkPages`, in address order. The
 * selection must be sorted by start; a page it names twice (overlapping
 * ranges) is placed once, so the index never holds one page in two runs. A
 * range that goes backwards is a bug in the caller: refused rather than
 * written as an image no reader accepts.
 */
export function* placePages(selection: Iterable<DumpRange>, chunkPages: number): Generator<Placement> {
  let covered = 0; // end of the pages placed so far
  let lastStart = -1;
  let chunk = 0;
  let fill = 0;
  for (const range of selection) {
    if (range.start < lastStart) {
      throw new Error(`page selection not sorted: 0x${range.start.toString(16)} after 0x${lastStart.toString(16)}`);
    }
    lastStart = range.start;
    let addr = Math.max(range.start, covered);
    while (addr < range.end) {
      const n = Math.min((range.end - addr) / PAGE, chunkPages - fill);
      yield { start: addr, pages: n, vma: range.vma, chunk, offset: fill };
      fill += n;
      addr += n * PAGE;
      if (fill === chunkPages) { chunk++; fill = 0; }
    }
    covered = Math.max(covered, range.end);
  }
}

/** Appends a Here run, joining it to the previous one when both are contiguous in memory and in the chunk. */
export function addRun(runs: PageRun[], r: PageRun): void {
  const last = runs[runs.length - 1];
  if (last && last.where === PageWhere.Here && last.chunk === r.chunk
    && last.start + last.pages * PAGE === r.start && last.offset + last.pages * PAGE === r.offset) {
    last.pages += r.pages;
  } else {
    runs.push(r);
  }
}

/**
 * Fills `buf` from the pending ranges in order. Readable ranges go through
 * process_vm_readv in batches; a short read moves the failing range (and only
 * it) to /proc/PID/mem. Returns the number of pages read the slow way.
 */
export function readInto(copier: VmCopier, mem: ProcMem, buf: Buffer, pending: Pending[], onVanished?: CopyOptions['onVanished']): number {
  let slow = 0;
  let off = 0;
  let i = 0;
  const slowRead = (at: number, len: number, addr: number) => {
    try {
      mem.read(buf, at, len, addr);
    } catch (err) {
      if (!onVanished) throw err;
      buf.fill(0, at, at + len);
      onVanished(addr, len);
    }
  };
  while (i < pending.length) {
    if (!pending[i].readable) {
      slowRead(off, pending[i].len, pending[i].start);
      slow += pending[i].len / PAGE;
      off += pending[i].len;
      i++;
      continue;
    }
    let j = i;
    const batch: RemoteRange[] = [];
    let want = 0;
    while (j < pending.length && pending[j].readable) {
      batch.push({ addr: pending[j].start, len: pending[j].len });
      want += pending[j].len;
      j++;
    }
    const got = copier.readv(buf, off, batch);
    if (got === want) {
      off += want;
      i = j;
      continue;
    }
    // Skip what was read, then read the range holding the failing byte slowly.
    let done = got;
    while (done >= pending[i].len) {
      done -= pending[i].len;
      off += pending[i].len;
      i++;
    }
    const p = pending[i];
    slowRead(off + done, p.len - done, p.start + done);
    slow += Math.ceil((p.len - done) / PAGE);
    off += p.len;
    i++;
  }
  return slow;
}

/**
 * Copies the selected pages of a frozen process into the pages file.
 *
 * Pages are packed into chunk buffers in address order. A chunk is filled by
 * one process_vm_readv (up to 1024 remote ranges per call, all into one
 * local iovec); pages the mapping does not let us read (PROT_NONE or
 * write-only memory that still holds data) come through /proc/PID/mem. The
 * index entry for each run of pages is recorded as the chunk fills.
 */
import { VmCopier, ProcMem, Pagemap, PROT_READ, type RemoteRange } from '../sys/index.js';
import type { Vma } from '../proc/maps.js';
import { PageFileWriter } from '../image/page-file.js';
import { PageWhere, type PageRun } from '../../formats/schema.js';
import { RangeSelector, SCAN_ANYOF, SCAN_RETURN, type VmaClass, type DumpRange } from './memory-plan.js';

const PAGE = 4096;

export interface PageDumpResult {
  runs: PageRun[];
  pagesWritten: number;
  pagesSlowPath: number;
}

interface Pending {
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
}

/** Pages of `vmas` to store in a full dump: one PAGEMAP_SCAN over the whole space. */
export function* fullSelection(pagemap: Pagemap, vmas: readonly Vma[], classes: readonly VmaClass[]): Generator<DumpRange> {
  const dumped = vmas.filter((_, i) => classes[i] !== 'notDumped');
  if (!dumped.length) return;
  const selector = new RangeSelector(vmas, classes);
  for (const batch of pagemap.scan({ start: dumped[0].start, end: dumped[dumped.length - 1].end, categoryAnyof: SCAN_ANYOF, returnMask: SCAN_RETURN })) {
    yield* selector.select(batch);
  }
}

/**
 * Copies the selected ranges (sorted by address) into the pages file and
 * returns the page index entries for them.
 */
export async function copyPages(
  pid: number,
  vmas: readonly Vma[],
  selection: Iterable<DumpRange>,
  writer: PageFileWriter,
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

  const flush = () => {
    if (!buf || fill === 0) return;
    pagesSlowPath += readInto(copier, mem, buf, pending, opts.onVanished);
    writer.submit(buf, fill * PAGE);
    pagesWritten += fill;
    opts.onProgress?.(fill * PAGE);
    buf = null;
    fill = 0;
    pending = [];
  };

  for (const range of selection) {
    const readable = (vmas[range.vma].prot & PROT_READ) !== 0;
    let addr = range.start;
    while (addr < range.end) {
      if (!buf) buf = await writer.acquire();
      const n = Math.min((range.end - addr) / PAGE, chunkPages - fill);
      const chunk = writer.chunks.length; // index the chunk will get on submit
      const last = runs[runs.length - 1];
      if (last && last.where === PageWhere.Here && last.chunk === chunk
        && last.start + last.pages * PAGE === addr && last.offset + last.pages * PAGE === fill * PAGE) {
        last.pages += n;
      } else {
        runs.push({ start: addr, pages: n, where: PageWhere.Here, chunk, offset: fill * PAGE });
      }
      const p = pending[pending.length - 1];
      if (p && p.readable === readable && p.start + p.len === addr) p.len += n * PAGE;
      else pending.push({ start: addr, len: n * PAGE, readable });
      fill += n;
      addr += n * PAGE;
      if (fill === chunkPages) flush();
    }
  }
  flush();
  return { runs, pagesWritten, pagesSlowPath };
}

/**
 * Fills `buf` from the pending ranges in order. Readable ranges go through
 * process_vm_readv in batches; a short read moves the failing range (and only
 * it) to /proc/PID/mem. Returns the number of pages read the slow way.
 */
function readInto(copier: VmCopier, mem: ProcMem, buf: Buffer, pending: Pending[], onVanished?: CopyOptions['onVanished']): number {
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

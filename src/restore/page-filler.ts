/**
 * Writing the image's pages into the new task. Chunk by chunk: decode (and
 * CRC-check) one chunk, then one process_vm_writev puts every run of that
 * chunk in place. Pages no run covers stay unpopulated, as they were.
 */
import { VmCopier, type RemoteRange } from '../sys/index.js';
import { PageFileReader } from '../image/page-file.js';
import { PageWhere, type PageRun } from '../../formats/schema.js';
import type { Image } from '../image/image-reader.js';
import { TsnapError } from '../errors.js';

export interface FillResult {
  pages: number;
  bytes: number;
}

/** Chunks read and decoded ahead of the one being written. */
const READ_AHEAD = 6;

export async function fillPages(pid: number, img: Image): Promise<FillResult> {
  const copier = new VmCopier(pid);
  const reader = new PageFileReader(img.dir, img.pagemap.chunks);
  let pages = 0;
  let pendingReads: Promise<Buffer>[] = [];
  try {
    // Runs are sorted by address; those of one chunk are contiguous in the index.
    const byChunk = new Map<number, PageRun[]>();
    for (const r of img.pagemap.runs) {
      if (r.where === PageWhere.Parent) {
        throw new TsnapError('badImage', `${img.dir}: a page run refers to a parent, but this is a full image`);
      }
      if (r.where !== PageWhere.Here) continue;
      let list = byChunk.get(r.chunk);
      if (!list) byChunk.set(r.chunk, (list = []));
      list.push(r);
    }
    const order = [...byChunk.keys()];
    const pending: Promise<Buffer>[] = [];
    pendingReads = pending;
    let next = 0;
    // Reused read buffers: fresh 1 MiB allocations would be mmap'ed and
    // page-faulted anew for every chunk.
    const pool: Buffer[] = Array.from({ length: READ_AHEAD }, () => Buffer.allocUnsafeSlow(img.inventory.chunkSize));
    const buffers: Buffer[] = [];
    const refill = () => {
      while (pool.length > 0 && next < order.length) {
        const buf = pool.pop()!;
        buffers.push(buf);
        pending.push(reader.readChunkAsync(order[next++], buf));
      }
    };
    refill();
    for (const chunk of order) {
      const runs = byChunk.get(chunk)!;
      const data = await pending.shift()!;
      const readBuf = buffers.shift()!;
      // Runs fill their chunk in order, so one local range feeds them all
      // when they are back to back; otherwise write run by run.
      let contiguous = true;
      for (let i = 1; i < runs.length; i++) {
        if (runs[i].offset !== runs[i - 1].offset + runs[i - 1].pages * 4096) contiguous = false;
      }
      if (contiguous) {
        const ranges: RemoteRange[] = runs.map((r) => ({ addr: r.start, len: r.pages * 4096 }));
        const want = ranges.reduce((s, r) => s + r.len, 0);
        const got = copier.writev(data, runs[0].offset, ranges);
        if (got !== want) throw new TsnapError('restoreFailed', `process_vm_writev wrote ${got} of ${want} bytes at 0x${runs[0].start.toString(16)}`);
      } else {
        for (const r of runs) {
          const got = copier.writev(data, r.offset, [{ addr: r.start, len: r.pages * 4096 }]);
          if (got !== r.pages * 4096) throw new TsnapError('restoreFailed', `process_vm_writev failed at 0x${r.start.toString(16)}`);
        }
      }
      for (const r of runs) pages += r.pages;
      pool.push(readBuf);
      refill();
    }
  } catch (err) {
    // Let reads in flight finish before their file descriptor goes.
    await Promise.allSettled(pendingReads);
    throw err;
  } finally {
    reader.close();
  }
  return { pages, bytes: pages * 4096 };
}

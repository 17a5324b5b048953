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

export function fillPages(pid: number, img: Image): FillResult {
  const copier = new VmCopier(pid);
  const reader = new PageFileReader(img.dir, img.pagemap.chunks);
  let pages = 0;
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
    for (const [chunk, runs] of byChunk) {
      const data = reader.readChunk(chunk);
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
    }
  } finally {
    reader.close();
  }
  return { pages, bytes: pages * 4096 };
}

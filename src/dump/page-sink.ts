/**
 * Where a dump's chunks of page data go. The pages file (PageFileWriter) is
 * one sink; a migration streams the same chunks onto its connection instead
 * (migrate/page-stream.ts), so that the copy loop, the planning and the
 * tracking stay one code path whichever way the pages leave.
 */
import type { ChunkEntry, PageRun } from '../../formats/schema.js';

export interface PageSink {
  /** One entry per chunk submitted, filled in (offset, codec, CRC) as each is stored. */
  readonly chunks: ChunkEntry[];
  readonly chunkSize: number;
  readonly bytesRaw: number;
  readonly bytesStored: number;
  /** A chunk buffer to fill; waits while every buffer is in flight (backpressure). */
  acquire(): Promise<Buffer>;
  /**
   * Queues `rawLength` bytes of `buf` as the next chunk. `runs`: the page
   * runs this chunk holds (a streaming sink sends them along, so the
   * receiver can place the pages before the image's index exists).
   */
  submit(buf: Buffer, rawLength: number, runs?: readonly PageRun[]): number;
  /** Waits for every chunk to be stored; returns the bytes stored. */
  finish(fsync: boolean): Promise<number>;
  abort(): Promise<void>;
}

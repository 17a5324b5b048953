/**
 * Writing the image's pages into the new task. Chunk by chunk: decode (and
 * CRC-check) one chunk, then one process_vm_writev puts every run of that
 * chunk in place. Pages no run covers stay unpopulated, as they were.
 */
import { VmCopier, type RemoteRange } from '../sys/index.js';
import { PageFileReader } from '../image/page-file.js';
import { resolveChain, type ResolvedRun } from '../image/chain-index.js';
import type { Range } from '../image/ranges.js';
import type { Image } from '../image/image-reader.js';
import { TsnapError } from '../errors.js';
import { SYS } from '../sys/uapi.js';
import type { RemoteSyscaller } from '../inject/remote-syscall.js';
import { PAGE_SIZE } from '../sys/uapi.js';

const MADV_POPULATE_WRITE = 23;
/** Runs shorter than this are left to fault in during the write. */
const POPULATE_MIN = 64 << 10;
/** One populate call covers at most this much, so the writer can follow closely. */
const POPULATE_SLICE = 16 << 20;

/**
 * Fresh memory costs most of a restore: every page is allocated and zeroed
 * on first write. The new task does that itself, on its own CPU, through
 * MADV_POPULATE_WRITE syscalls started ahead of the writer, while tsnap
 * reads, checks and writes the chunks before them.
 */
class Populator {
  private queue: { addr: number; len: number; lastChunkPos: number }[] = [];
  private next = 0;
  private done = 0;
  private broken = false;

  /**
   * `resolved`: sorted by address; `posOf(run)`: the position of its chunk
   * in the writer's order. Ranges are made only for what will be populated
   * (a run of 10 000 single pages makes none, and no object per run).
   */
  constructor(private readonly sc: RemoteSyscaller | null, resolved: readonly ResolvedRun[], posOf: (r: ResolvedRun) => number) {
    if (!sc) return;
    // Merged by address across the images of a chain: a base image's runs
    // that newer pages cut into short pieces are one range again, as in a
    // single image. Started in the order the writer first needs them.
    const merged: { addr: number; len: number; firstChunkPos: number; lastChunkPos: number }[] = [];
    let addr = 0;
    let len = 0;
    let first = 0;
    let last = 0;
    const close = () => { if (len >= POPULATE_MIN) merged.push({ addr, len, firstChunkPos: first, lastChunkPos: last }); };
    for (const run of resolved) {
      const pos = posOf(run);
      const l = run.pages * PAGE_SIZE;
      if (len > 0 && addr + len === run.start && len < POPULATE_SLICE) {
        len += l;
        first = Math.min(first, pos);
        last = Math.max(last, pos);
      } else {
        close();
        addr = run.start;
        len = l;
        first = last = pos;
      }
    }
    close();
    this.queue = merged.sort((a, b) => a.firstChunkPos - b.firstChunkPos || a.addr - b.addr);
  }

  private start(): void {
    if (this.broken || this.next >= this.queue.length) return;
    const q = this.queue[this.next++];
    this.sc!.begin(SYS.madvise, q.addr, q.len, MADV_POPULATE_WRITE);
  }

  private finish(r: bigint): void {
    this.done++;
    if (r < 0n) this.broken = true; // an old kernel: the writes fault pages in instead
    this.start();
  }

  /** Kicks the first populate off. */
  begin(): void {
    if (this.sc) this.start();
  }

  /** Before writing the chunk at position `pos`: everything it needs is populated. */
  ready(pos: number): void {
    if (!this.sc) return;
    // Collect finished populates without waiting, so the task never idles.
    while (this.done < this.next) {
      const r = this.sc.poll();
      if (r === null) break;
      this.finish(r);
    }
    while (this.done < this.next && this.queue[this.done].lastChunkPos <= pos) this.finish(this.sc.end());
  }

  /** Waits for a populate still running (the task must be stopped again). */
  drain(): void {
    if (!this.sc) return;
    this.broken = true;
    while (this.done < this.next) { this.sc.end(); this.done++; }
  }
}

export interface FillResult {
  pages: number;
  bytes: number;
}

/** Chunks read and decoded ahead of the one being written. */
const READ_AHEAD = 6;
/**
 * Up to this many chunks are read on tsnap's own thread instead: what a
 * lazy restore writes at once (the stack, file mappings' data: a chunk or
 * two) waited for the pool's read and the event loop's turn per chunk,
 * 1-30 ms each on a loaded machine, besides READ_AHEAD fresh buffers.
 */
const SYNC_CHUNKS = 2;

/** `resolved`: the chain already resolved over the memory to fill (checkUnreadChunks did it), not computed again; `within` is then not read. */
export async function fillPages(pid: number, chain: readonly Image[], within: Range[], sc: RemoteSyscaller | null = null, onProgress?: (done: number, total: number) => void, resolvedAlready?: readonly ResolvedRun[]): Promise<FillResult> {
  const copier = new VmCopier(pid);
  const readers: (PageFileReader | null)[] = chain.map(() => null);
  const readerOf = (image: number) => (readers[image] ??= new PageFileReader(chain[image].dir, chain[image].pagemap.chunks));
  let pages = 0;
  let pendingReads: Promise<Buffer>[] = [];
  let populator: Populator | null = null;
  try {
    // Each page from the newest image that has it; resolved runs are sorted
    // by address, and so are the runs of one chunk.
    const resolved = resolvedAlready ?? resolveChain(chain.map((c) => ({ kind: c.inventory.kind, runs: c.pagemap.runs })), within);
    const byChunk = new Map<number, ResolvedRun[]>();
    for (const r of resolved) {
      // A number, not a string: ~10 000 runs per restore of a chain or of 10 000 VMAs.
      const key = r.image * 0x100000000 + r.chunk;
      let list = byChunk.get(key);
      if (!list) byChunk.set(key, (list = []));
      list.push(r);
    }
    const order = [...byChunk.keys()];
    const total = resolved.reduce((n, r) => n + r.pages * PAGE_SIZE, 0);
    const posOfKey = new Map(order.map((key, pos) => [key, pos]));
    populator = new Populator(sc, resolved, (r) => posOfKey.get(r.image * 0x100000000 + r.chunk)!);
    populator.begin();
    const pending: Promise<Buffer>[] = [];
    pendingReads = pending;
    let next = 0;
    // Reused read buffers: fresh 1 MiB allocations would be mmap'ed and
    // page-faulted anew for every chunk.
    // As large as the largest stored chunk, not what an inventory claims.
    let largest = PAGE_SIZE;
    for (const c of chain) for (const ch of c.pagemap.chunks) largest = Math.max(largest, ch.storedLength);
    const sync = order.length <= SYNC_CHUNKS;
    const pool: Buffer[] = sync ? [] : Array.from({ length: READ_AHEAD }, () => Buffer.allocUnsafeSlow(largest));
    const buffers: Buffer[] = [];
    const refill = () => {
      while (pool.length > 0 && next < order.length) {
        const buf = pool.pop()!;
        buffers.push(buf);
        const first = byChunk.get(order[next++])![0];
        const read = readerOf(first.image).readChunkAsync(first.chunk, buf);
        // A read ahead may fail while an earlier chunk is being written: it
        // is reported when its turn comes (or by the cleanup), never as an
        // unhandled rejection that would end tsnap with a stack trace.
        read.catch(() => {});
        pending.push(read);
      }
    };
    refill();
    for (let pos = 0; pos < order.length; pos++) {
      const runs = byChunk.get(order[pos])!;
      populator.ready(pos);
      const data = sync ? readerOf(runs[0].image).readChunk(runs[0].chunk) : await pending.shift()!;
      const readBuf = sync ? null : buffers.shift()!;
      // Runs fill their chunk in order, so one local range feeds them all
      // when they are back to back; otherwise write run by run.
      let contiguous = true;
      for (let i = 1; i < runs.length; i++) {
        if (runs[i].offset !== runs[i - 1].offset + runs[i - 1].pages * PAGE_SIZE) contiguous = false;
      }
      if (contiguous) {
        const ranges: RemoteRange[] = runs.map((r) => ({ addr: r.start, len: r.pages * PAGE_SIZE }));
        const want = ranges.reduce((s, r) => s + r.len, 0);
        const got = copier.writev(data, runs[0].offset, ranges);
        if (got !== want) throw new TsnapError('restoreFailed', `process_vm_writev wrote ${got} of ${want} bytes at 0x${runs[0].start.toString(16)}`);
      } else {
        // Runs a newer image of the chain cut into: still one call for the chunk.
        const pieces = runs.map((r) => ({ offset: r.offset, addr: r.start, len: r.pages * PAGE_SIZE }));
        const want = pieces.reduce((s, r) => s + r.len, 0);
        const got = copier.writePieces(data, pieces);
        if (got !== want) {
          let at = 0;
          const failed = pieces.find((p) => (at += p.len) > got) ?? pieces[0];
          throw new TsnapError('restoreFailed', `process_vm_writev failed at 0x${failed.addr.toString(16)}`);
        }
      }
      for (const r of runs) pages += r.pages;
      onProgress?.(pages * PAGE_SIZE, total);
      if (readBuf) pool.push(readBuf);
      refill();
    }
    populator.drain();
  } catch (err) {
    try { populator?.drain(); } catch { /* the task is killed anyway */ }
    // Let reads in flight finish before their file descriptor goes.
    await Promise.allSettled(pendingReads);
    throw err;
  } finally {
    for (const r of readers) r?.close();
  }
  return { pages, bytes: pages * PAGE_SIZE };
}

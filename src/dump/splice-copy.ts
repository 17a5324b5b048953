/**
 * The one-copy dump of a frozen process's pages: the target vmsplices them
 * into pipes of its own (splice-pipes.ts), one remote step for a batch of
 * pipes, and tsnap splices each pipe into the pages file at the chunk's
 * place. The bytes are copied once, from the target's pages into the page
 * cache (the usual path copies them twice: process_vm_readv into a buffer,
 * then a write from it).
 *
 * The image is the one the usual path writes (formats/image-v1.md): the
 * same placement of pages in chunks (placePages), uncompressed chunks, each
 * with the CRC of its stored bytes. The splice never brings the bytes into
 * tsnap, so each chunk is read back from the page cache once stored, in
 * small pieces that stay in the CPU's cache, and checked: by C code on a
 * thread of libuv's pool while this one splices on (splice-crc-pool.ts,
 * the default), here (TSNAP_SPLICE_CRC=inline), or past the first 64 MiB by
 * a worker thread (TSNAP_SPLICE_CRC_THREAD=1, splice-crc.ts; see
 * docs/performance.md).
 *
 * From 64 MiB the chunks alternate between two pages files (`pages` and
 * `pages.1`, image format 2): each step, a thread of libuv's pool splices
 * the pipes of `pages.1`'s chunks (tsnap_splice_pipes, src/sys/splice.ts)
 * while this thread splices the others into `pages`. Writes into one file
 * take turns on its inode lock; into two they run on both cores.
 *
 * Only for frozen copies without compression (lz4 needs the bytes in tsnap)
 * into a pages file. Whatever vmsplice does not take (pages the mapping
 * does not let the target read, a short or refused vmsplice) goes the
 * usual way for that piece: process_vm_readv (or /proc/PID/mem) and a
 * write at the piece's place.
 */
import { openSync, closeSync, readSync, writeSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { VmCopier, PROT_READ, SysError, spliceToFile, splicePipes, splicePipesAsync, canSplicePooled, type PipeSplice, type ProcMem } from '../sys/index.js';
import type { Vma } from '../proc/maps.js';
import type { FrozenProcess } from '../freeze/frozen-process.js';
import { PageFileWriter } from '../image/page-writer.js';
import type { PageSink } from './page-sink.js';
import { withPath } from '../errors.js';
import { mark } from '../trace.js';
import { faultPoint, pausePoint } from '../fault-points.js';
import { PageWhere, type ChunkEntry, type Compression, type PageRun, type SpliceStats } from '../../formats/schema.js';
import type { DumpRange } from './memory-plan.js';
import { placePages, addRun, readInto, type Pending, type PageDumpResult } from './page-dumper.js';
import { TargetPipes, type PipeJob } from './splice-pipes.js';
import { SpliceCrc } from './splice-crc.js';
import { PoolCrc } from './splice-crc-pool.js';
import { crc32 } from '../image/checksum.js';
import { PAGE_SIZE } from '../sys/uapi.js';

const PAGE = PAGE_SIZE;
/**
 * Below this the pipes' setup (a scratch mapping, three guardian requests
 * per pipe) costs more than the copy saved (~0.3 ms per MiB).
 */
const MIN_COPY_BYTES = 4 << 20;
/** Bytes of page data one remote step moves (pipes x their size): fewer steps against more pipes in the target. */
const STEP_BYTES = 48 << 20;
/**
 * 48 pipes of 1 MiB: 22 remote steps per GiB (32 took 33, 16 took 65);
 * during a step both splicing threads wait. They are made in one guardian
 * request and closed in one remote step, so more pipes no longer cost more
 * requests; the guardian keeps 128 undos per task (both ends of each pipe,
 * the scratch mapping): 63 would fit. An even count splits each step
 * evenly over two pages files. TSNAP_SPLICE_PIPES sets fewer
 * (bench/floor.ts compares in the same run).
 */
const MAX_PIPES = 48;
const PIPE_BYTES = 1 << 20;
const maxPipes = (): number => {
  const n = Number(process.env.TSNAP_SPLICE_PIPES);
  return Number.isInteger(n) && n >= 1 && n <= MAX_PIPES ? n : MAX_PIPES;
};
/**
 * Chunks checked on the main thread before the CRC thread starts: below
 * this the thread's start (tens of ms, more under load) would cost more
 * than the CRCs (~0.3 ms per MiB).
 */
const INLINE_CRC_BYTES = 64 << 20;
/**
 * Where the CRC read-backs run. `pool` (the default, when the C library is
 * built): libuv's pool, no isolate, RSS as inline. `thread`
 * (TSNAP_SPLICE_CRC_THREAD=1): a worker past the first 64 MiB, +9 MiB of
 * peak RSS (its V8 isolate). `inline` (TSNAP_SPLICE_CRC=inline): between
 * the splices, on this thread (docs/performance.md).
 */
const crcMode = (): 'pool' | 'thread' | 'inline' =>
  process.env.TSNAP_SPLICE_CRC_THREAD === '1' ? 'thread' : process.env.TSNAP_SPLICE_CRC === 'inline' ? 'inline' : 'pool';
/** A piece read back stays in the CPU's cache until its CRC is taken. */
const CRC_PIECE = 256 << 10;
/**
 * From this size the page data is split over two pages files (format 2),
 * every other chunk in `pages.1`, spliced there by a thread of libuv's pool
 * while the main thread splices into `pages`: one file's writes take turns
 * on its inode lock, two files' run on both cores. Under it the copy is too
 * short for the second thread to pay, and the image stays format 1.
 */
const SPLIT_MIN_BYTES = 64 << 20;

/**
 * Pages files for this copy: 2 from SPLIT_MIN_BYTES on a machine with a
 * second core, with the CRCs on the pool (the other modes read one file)
 * and the native splice built. TSNAP_SPLICE_FILES=1 keeps one (bench/floor.ts
 * compares in the same run), =2 splits any copy (tests of small processes).
 */
function pagesFiles(a: Pick<SpliceInput, 'estimate' | 'onePagesFile'>): 1 | 2 {
  const env = process.env.TSNAP_SPLICE_FILES;
  if (a.onePagesFile || env === '1' || crcMode() !== 'pool' || !canSplicePooled()) return 1;
  if (env === '2') return 2;
  return a.estimate >= SPLIT_MIN_BYTES && availableParallelism() >= 2 ? 2 : 1;
}

export interface SpliceInput {
  pid: number;
  frozen: FrozenProcess | null;
  vmas: readonly Vma[];
  selection: Iterable<DumpRange>;
  /** Bytes the selection is expected to hold (exact for a delta, resident memory for a full copy). */
  estimate: number;
  writer: PageSink;
  mem: ProcMem;
  compression: Compression;
  onProgress?: (bytes: number) => void;
  /** Never split the page data over two files (DumpOptions.onePagesFile). */
  onePagesFile?: boolean;
}

/** Why the one-copy path cannot be used for this copy (null: it can be tried). */
export function spliceUnfit(a: Pick<SpliceInput, 'frozen' | 'writer' | 'compression' | 'estimate'>): string | null {
  if (process.env.TSNAP_SPLICE === '0') return 'off (TSNAP_SPLICE=0)';
  if (!a.frozen) return 'the process runs';
  // TSNAP_SPLICE=always: every frozen copy, however small (tests and conformance runs of small processes).
  if (a.estimate < MIN_COPY_BYTES && process.env.TSNAP_SPLICE !== 'always') return 'a small copy: making the pipes costs more than the copy saved';
  if (a.compression !== 'none') return 'compressed chunks need the bytes in tsnap';
  if (!(a.writer instanceof PageFileWriter)) return 'pages go to a stream, not a file';
  return null;
}

/**
 * Copies the selection with one copy; null (nothing done, nothing left in
 * the target) when the path is unfit or its pipes cannot be made here: the
 * caller copies the usual way.
 */
export async function copySpliced(a: SpliceInput): Promise<{ pages: PageDumpResult; stats: SpliceStats } | null> {
  const unfit = spliceUnfit(a);
  if (unfit) { mark(`dump: one-copy path unused (${unfit})`); return null; }
  const writer = a.writer as PageFileWriter;
  // Each pipe costs three guardian requests (made, and its two ends closed): no more than the copy fills.
  const count = Math.max(1, Math.min(maxPipes(), Math.round(STEP_BYTES / PIPE_BYTES), Math.ceil(a.estimate / PIPE_BYTES)));
  const pipes = TargetPipes.open(a.frozen!, a.mem, count, PIPE_BYTES);
  if (typeof pipes === 'string') { mark(`dump: one-copy path unused (${pipes})`); return null; }
  mark(`dump: ${pipes.count} pipes of ${pipes.capacity} bytes in the target`);
  let copy: SplicedCopy | null = null;
  try {
    copy = new SplicedCopy(a, writer, pipes, pagesFiles(a));
    const pages = await copy.run();
    // Every pipe is empty here: the target's pages are no longer referenced.
    pipes.close();
    // The CRCs need the page cache, not the target: they may end after it runs again.
    const stats = copy.stats();
    writer.waitFor(copy.crcsDone(stats));
    return { pages, stats };
  } catch (err) {
    copy?.abort();
    throw err;
  } finally {
    try { pipes.close(); } catch { /* the task is gone; the guardian's undo list has the rest */ }
  }
}

interface Piece {
  /** Where in the pages file. */
  pos: number;
  len: number;
  ranges: Pending[];
  /** Goes through a pipe (readable memory) or the usual way. */
  pipe: boolean;
  chunk: Chunk;
  /** The chunk is stored once this piece is. */
  last: boolean;
}


interface Chunk {
  entry: ChunkEntry;
  position: number;
  len: number;
  pieces: Piece[];
  /** The pages file it is in: its index, fd and path. */
  file: 0 | 1;
  fd: number;
  path: string;
}

class SplicedCopy {
  private readonly copier: VmCopier;
  private readonly chunkSize: number;
  private queued: Chunk[] = [];
  private queuedPipes = 0;
  /** Set when vmsplice is refused outright (not a fault in one range): the rest goes the usual way. */
  private refused: number | null = null;
  private slowBuf: Buffer | null = null;
  private pagesSlowPath = 0;
  private pagesSpliced = 0;
  private fillNs = 0n;
  private spliceNs = 0n;
  private crcFirst: bigint | null = null;
  private crcLast = 0n;
  /** When the last splice was done. */
  private copiedAt = 0n;

  private poolWaitNs = 0n;

  constructor(private readonly a: SpliceInput, private readonly writer: PageFileWriter, private readonly pipes: TargetPipes, private readonly files: 1 | 2) {
    this.copier = new VmCopier(a.pid);
    this.chunkSize = writer.chunkSize;
  }

  async run(): Promise<PageDumpResult> {
    const { a, writer } = this;
    const runs: PageRun[] = [];
    const chunkPages = this.chunkSize / PAGE;
    const firstChunk = writer.chunks.length;
    let pending: Pending[] = [];
    let fill = 0;
    let chunkNo = 0;
    let pagesWritten = 0;
    try {
      const close = async () => {
        if (fill === 0) return;
        // Two files: every other chunk in the second, so each step's pipes split evenly between the threads.
        const file = this.files === 2 ? ((chunkNo % 2) as 0 | 1) : 0;
        const res = writer.reserveRaw(fill * PAGE, file);
        if (res.index !== firstChunk + chunkNo) throw new Error(`one-copy dump: chunk ${res.index} reserved for ${firstChunk + chunkNo}`);
        this.enqueue({ entry: res.entry, position: res.position, len: fill * PAGE, pieces: [], file, fd: res.fd, path: res.path }, pending);
        pagesWritten += fill;
        chunkNo++;
        pending = [];
        fill = 0;
        if (this.queuedPipes >= this.pipes.count) await this.flush();
      };
      for (const pl of placePages(a.selection, chunkPages)) {
        const readable = (a.vmas[pl.vma].prot & PROT_READ) !== 0;
        addRun(runs, { start: pl.start, pages: pl.pages, where: PageWhere.Here, chunk: firstChunk + pl.chunk, offset: pl.offset * PAGE });
        const p = pending[pending.length - 1];
        if (p && p.readable === readable && p.start + p.len === pl.start) p.len += pl.pages * PAGE;
        else pending.push({ start: pl.start, len: pl.pages * PAGE, readable });
        fill += pl.pages;
        if (fill === chunkPages) await close();
      }
      await close();
      await this.flush();
      this.copiedAt = process.hrtime.bigint();
    } catch (err) {
      this.abort();
      throw err;
    }
    return { runs, pagesWritten, pagesSlowPath: this.pagesSlowPath };
  }

  /** Cuts a chunk into pieces: runs of readable memory that fit one pipe, and the rest. */
  private enqueue(c: Chunk, pending: Pending[]): void {
    const cap = this.pipes.capacity;
    let off = 0;
    let cur: Piece | null = null;
    for (const p of pending) {
      if (!p.readable || this.refused !== null) {
        c.pieces.push({ pos: c.position + off, len: p.len, ranges: [p], pipe: false, chunk: c, last: false });
        off += p.len;
        cur = null;
        continue;
      }
      let addr = p.start;
      let left = p.len;
      while (left > 0) {
        if (!cur || cur.len === cap || cur.ranges.length === this.pipes.maxRanges) {
          cur = { pos: c.position + off, len: 0, ranges: [], pipe: true, chunk: c, last: false };
          c.pieces.push(cur);
          this.queuedPipes++;
        }
        const n = Math.min(left, cap - cur.len);
        cur.ranges.push({ start: addr, len: n, readable: true });
        cur.len += n;
        off += n;
        addr += n;
        left -= n;
      }
    }
    c.pieces[c.pieces.length - 1].last = true;
    this.queued.push(c);
  }

  /** Stores every queued chunk: one remote step fills every pipe, then this thread splices them. */
  private async flush(): Promise<void> {
    const chunks = this.queued;
    this.queued = [];
    this.queuedPipes = 0;
    const pieces = chunks.flatMap((c) => c.pieces);
    for (let i = 0; i < pieces.length;) {
      const group: Piece[] = [];
      let used = 0;
      while (i < pieces.length && (!pieces[i].pipe || this.refused !== null || used < this.pipes.count)) {
        if (pieces[i].pipe && this.refused === null) used++;
        group.push(pieces[i++]);
      }
      const f = this.fill(group);
      await this.storeGroup(f.group, f.viaPipe, f.rets);
    }
    // Lets signals (SIGTERM, Ctrl-C) be seen between steps; the target stays frozen.
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  /**
   * One remote step for the group's pipe pieces. (Overlapping it with the
   * splices of the group before, on two halves of the pipes, measured
   * slower on two loaded cores: see docs/performance.md.)
   */
  private fill(group: Piece[]): { group: Piece[]; viaPipe: Piece[]; rets: bigint[] } {
    const viaPipe = this.refused === null ? group.filter((p) => p.pipe) : [];
    const jobs: PipeJob[] = viaPipe.map((p, k) => ({ pipe: k, ranges: p.ranges.map((r) => ({ addr: r.start, len: r.len })) }));
    if (!jobs.length) return { group, viaPipe, rets: [] };
    const t0 = process.hrtime.bigint();
    const rets = this.pipes.fill(jobs);
    this.fillNs += process.hrtime.bigint() - t0;
    // Refused for every piece the same way (not a fault in one range): stop asking.
    const e = rets[0];
    if (e < 0n && e !== -14n && rets.every((r) => r === e)) {
      this.refused = Number(-e);
      mark(`dump: vmsplice refused (errno ${this.refused}); the rest is copied the usual way`);
    }
    return { group, viaPipe, rets };
  }

  /**
   * Empties every pipe of the step into the pages files. With two files,
   * the pieces of `pages.1` go to a thread of libuv's pool in one call while
   * this thread splices those of `pages`; both are done before the next
   * step refills the pipes (and before the target may run).
   */
  private async storeGroup(group: Piece[], viaPipe: Piece[], rets: bigint[]): Promise<void> {
    // Per piece that went through a pipe: its pipe, and the bytes vmsplice put there.
    const inPipe = new Map<Piece, { pipe: number; got: number }>();
    viaPipe.forEach((p, k) => {
      const got = rets[k] > 0n ? Number(rets[k]) : 0;
      if (got > p.len) throw new Error(`one-copy dump: vmsplice took ${got} bytes of ${p.len}`);
      inPipe.set(p, { pipe: k, got });
    });
    // The splices of this thread (into pages) and of the pool's (into pages.1, two files only).
    const native = canSplicePooled();
    // Only where the splices are spread over two threads (or there is one core): with one file on two
    // cores, the pool's reader beside the one splicing thread gives the shorter wall (bench/floor.ts).
    const hotCrc = crcMode() === 'pool' && process.env.TSNAP_SPLICE_HOT_CRC !== '0' && (this.files === 2 || availableParallelism() < 2);
    const here: { p: Piece; job: PipeSplice }[] = [];
    const there: { p: Piece; job: PipeSplice }[] = [];
    for (const [p, { pipe, got }] of inPipe) {
      if (!got) continue;
      // A chunk that is this one piece, whole: its CRC is read back by the splicing thread at once, still in cache.
      // (TSNAP_SPLICE_HOT_CRC=0: every CRC by the pool's reader, as before; bench/floor.ts compares.)
      const crc = native && hotCrc && p.chunk.pieces.length === 1 && got === p.chunk.len;
      (this.files === 2 && p.chunk.file === 1 ? there : here).push({ p, job: { pipe: this.pipes.readEnd(pipe), position: p.pos, len: got, crc } });
    }
    const t0 = process.hrtime.bigint();
    const pool = there.length ? splicePipesAsync(there[0].p.chunk.fd, there.map((x) => x.job), this.readBackFd(there[0].p.chunk), this.poolBuf ??= Buffer.allocUnsafeSlow(CRC_PIECE)) : null;
    // A tsnap killed here dies with a pool thread inside splice(): the guardian still empties the target of its pipes.
    // A tsnap signalled here (a test pauses it with the pool's splice in flight) sees the abort only once it settled.
    if (pool) { faultPoint('splice-pooled'); pausePoint('splice-pooled'); }
    let failure: unknown = null;
    try {
      if (here.length) {
        const path = here[0].p.chunk.path;
        try {
          if (native) this.hotCrcs(here, splicePipes(here[0].p.chunk.fd, here.map((x) => x.job), this.readBackFd(here[0].p.chunk), this.hereBuf ??= Buffer.allocUnsafeSlow(CRC_PIECE)));
          else for (const { p, job } of here) spliceToFile(job.pipe, p.chunk.fd, job.position, job.len);
        } catch (err) {
          throw asWriteError(err, path);
        }
        for (const { job } of here) this.pagesSpliced += job.len / PAGE;
      }
      for (const p of group) {
        const via = inPipe.get(p);
        if (!via) { this.slowWrite(p.ranges, p.pos, p.chunk); continue; }
        // The rest of a short vmsplice, at its place (disjoint from the pool's splices).
        if (via.got < p.len) this.slowWrite(skip(p.ranges, via.got), p.pos + via.got, p.chunk);
      }
    } catch (err) {
      failure = err;
    }
    // The pool's splices read the pipes: they end before anything may close them, even after a failure here.
    if (pool) {
      const t1 = process.hrtime.bigint();
      try {
        this.hotCrcs(there, await pool);
        for (const { job } of there) this.pagesSpliced += job.len / PAGE;
      } catch (err) {
        failure ??= asWriteError(err, there[0].p.chunk.path);
      }
      this.poolWaitNs += process.hrtime.bigint() - t1;
    }
    if (failure) throw failure;
    this.spliceNs += process.hrtime.bigint() - t0;
    for (const p of group) {
      if (!p.last) continue;
      if (!this.crcTaken.delete(p.chunk)) this.checksum(p.chunk);
      this.a.onProgress?.(p.chunk.len);
    }
  }

  /** Per pages file: a read-only fd for the splices' CRCs (the writer's is write-only). */
  private readonly readBackFds: number[] = [];

  private readBackFd(c: Chunk): number {
    if (this.readBackFds[c.file] === undefined) {
      try {
        this.readBackFds[c.file] = openSync(c.path, 'r');
      } catch (err) {
        throw withPath(err, c.path);
      }
    }
    return this.readBackFds[c.file];
  }

  private closeReadBackFds(): void {
    for (const fd of this.readBackFds.splice(0)) if (fd !== undefined) { try { closeSync(fd); } catch { /* closed */ } }
  }

  /** Read-back buffers of the CRCs taken by the splices: this thread's, the pool's. */
  private hereBuf: Buffer | null = null;
  private poolBuf: Buffer | null = null;
  /** Chunks whose CRC the splice took: checksum() skips them. */
  private readonly crcTaken = new Set<Chunk>();
  private crcsSpliced = 0;

  private hotCrcs(xs: readonly { p: Piece; job: PipeSplice }[], crcs: readonly (number | null)[]): void {
    xs.forEach(({ p }, i) => {
      const crc = crcs[i];
      if (crc === null || crc === undefined) return;
      p.chunk.entry.crc32 = crc >>> 0;
      this.crcTaken.add(p.chunk);
      this.crcsSpliced++;
      this.crcOn ??= 'pool';
      const now = process.hrtime.bigint();
      this.crcFirst ??= now;
      this.crcLast = now;
    });
  }

  /** The usual two copies for one piece: into a buffer, then written at its place. */
  private slowWrite(ranges: Pending[], pos: number, c: Chunk): void {
    const len = ranges.reduce((n, r) => n + r.len, 0);
    if (!this.slowBuf || this.slowBuf.length < len) this.slowBuf = Buffer.allocUnsafeSlow(Math.max(len, this.pipes.capacity));
    this.pagesSlowPath += readInto(this.copier, this.a.mem, this.slowBuf, ranges);
    try {
      for (let done = 0; done < len;) {
        const n = writeSync(c.fd, this.slowBuf, done, len - done, pos + done);
        if (n === 0) throw Object.assign(new Error('short write'), { code: 'EIO' });
        done += n;
      }
    } catch (err) {
      throw withPath(err, c.path);
    }
  }

  /**
   * The chunk's CRC, read back from the page cache: here, or with the CRC
   * thread on, here for the first INLINE_CRC_BYTES (a small dump does not
   * wait for a thread to start) and then there while this one splices the
   * next chunks. The writer's finish() waits for all.
   */
  private checksum(c: Chunk): void {
    this.crcFirst ??= process.hrtime.bigint();
    // One reader per pages file: with two, a CRC call of each may be in flight.
    if (!(c.file in this.pools)) this.pools[c.file] = crcMode() === 'pool' ? PoolCrc.open(c.path) : null;
    const pool = this.pools[c.file];
    if (pool) {
      this.crcOn = 'pool';
      const work = pool.crc(c.position, c.len).then(
        (crc) => { c.entry.crc32 = crc; this.crcLast = process.hrtime.bigint(); },
        (err) => { throw withPath(err, c.path); },
      );
      // Seen by crcsDone() (Promise.all), or dropped by abort(): never an unhandled rejection meanwhile.
      work.catch(() => {});
      this.crcWork.push(work);
      return;
    }
    if (!this.crc && (this.inlineBytes + c.len <= INLINE_CRC_BYTES || crcMode() !== 'thread')) {
      this.inlineBytes += c.len;
      this.crcOn ??= 'inline';
      c.entry.crc32 = this.crcHere(c);
      this.crcLast = process.hrtime.bigint();
      return;
    }
    this.crc ??= SpliceCrc.start(this.writer.path);
    this.crcOn = 'thread';
    const work = this.crc.crc(c.position, c.len).then(
      (crc) => { c.entry.crc32 = crc; this.crcLast = process.hrtime.bigint(); },
      (err) => { throw withPath(err, this.writer.path); },
    );
    this.crcWork.push(work);
  }

  private crc: SpliceCrc | null = null;
  private crcOn: SpliceStats['crcOn'];
  /** The C readers on libuv's pool, per pages file (absent: not yet chosen; null: not used). */
  private pools: Partial<Record<0 | 1, PoolCrc | null>> = {};
  private crcWork: Promise<void>[] = [];
  private inlineBytes = 0;
  private readFd = -1;
  private readBuf: Buffer | null = null;

  private crcHere(c: Chunk): number {
    try {
      // Only `pages`: a second file is written only with the CRCs on the pool (pagesFiles).
      if (c.file !== 0) throw new Error('one-copy dump: an inline CRC of a chunk of pages.1');
      if (this.readFd < 0) this.readFd = openSync(this.writer.path, 'r');
      this.readBuf ??= Buffer.allocUnsafeSlow(CRC_PIECE);
      let crc = 0;
      for (let done = 0; done < c.len;) {
        const n = readSync(this.readFd, this.readBuf, 0, Math.min(CRC_PIECE, c.len - done), c.position + done);
        if (n <= 0) throw Object.assign(new Error('short read of a chunk just stored'), { code: 'EIO' });
        crc = crc32(this.readBuf.subarray(0, n), crc);
        done += n;
      }
      return crc;
    } catch (err) {
      throw withPath(err, this.writer.path);
    }
  }

  private closeReadFd(): void {
    if (this.readFd >= 0) { try { closeSync(this.readFd); } catch { /* closed */ } this.readFd = -1; }
  }

  /** Every CRC asked for; the thread ends once they are answered. `stats` gets their times. */
  crcsDone(stats?: SpliceStats): Promise<void> {
    this.closeReadFd();
    this.closeReadBackFds();
    this.crc?.end();
    const pooled = Object.values(this.pools).map((p) => p?.end());
    return Promise.all([...this.crcWork, ...pooled]).then(() => {
      if (!stats || this.crcFirst === null) return;
      stats.crcUs = Number((this.crcLast - this.crcFirst) / 1000n);
      stats.crcAfterUs = this.crcLast > this.copiedAt ? Number((this.crcLast - this.copiedAt) / 1000n) : 0;
    });
  }

  /** After a failure: the CRC thread ends now. */
  abort(): void {
    this.closeReadFd();
    this.closeReadBackFds();
    this.crc?.abort();
    for (const p of Object.values(this.pools)) p?.abort();
    for (const w of this.crcWork) w.catch(() => {});
  }

  stats(): SpliceStats {
    const us = (ns: bigint) => Number(ns / 1000n);
    return {
      pipes: this.pipes.count,
      pipeBytes: this.pipes.capacity,
      trips: this.pipes.trips,
      pagesSpliced: this.pagesSpliced,
      fillUs: us(this.fillNs),
      spliceUs: us(this.spliceNs),
      crcUs: 0,
      crcAfterUs: 0,
      ...(this.crcOn ? { crcOn: this.crcOn } : {}),
      ...(this.refused !== null ? { refusedErrno: this.refused } : {}),
      ...(this.files === 2 ? { files: 2, poolWaitUs: us(this.poolWaitNs) } : {}),
      ...(this.crcsSpliced ? { crcsSpliced: this.crcsSpliced } : {}),
    };
  }
}

/** `ranges` without their first `bytes`. */
function skip(ranges: readonly Pending[], bytes: number): Pending[] {
  const out: Pending[] = [];
  let left = bytes;
  for (const r of ranges) {
    if (left >= r.len) { left -= r.len; continue; }
    out.push({ start: r.start + left, len: r.len - left, readable: r.readable });
    left = 0;
  }
  return out;
}


/**
 * A failed splice into the pages file, told as a failed write of it is (a
 * full disk: "no space left on the device writing DIR/pages"): the file's
 * name, not the pipe's call, is what the user needs.
 */
function asWriteError(err: unknown, path: string): unknown {
  if (!(err instanceof SysError)) return withPath(err, path);
  return Object.assign(new Error(`${err.code}: ${err.message}, writing ${path}`), { code: err.code, errno: -err.errno, syscall: 'splice', path, cause: err });
}

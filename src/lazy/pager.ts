/**
 * The pager of a lazy restore: it holds the userfaultfd of each restored
 * address space (and of every child forked from one before its fill ended),
 * answers missing-page faults first, and fills everything else in address
 * order in between. When nothing is pending it closes its uffds: the last
 * close unregisters every range, and the process is a process like any
 * other.
 *
 * One loop, on the event loop: read every queued message without blocking
 * (events first: a fork, mremap or munmap holds COPY back with EAGAIN until
 * its message is read), serve the faults, then one background step. The
 * loop never waits on a uffd itself; it only yields while a page source
 * fetches, so a remote source can share the event loop.
 */
import { readUffdMsgs, closeRaw, uffdCopy, uffdZeropage, uffdWake, pollAsync, UFFD_EAGAIN, UFFD_EEXIST, errnoName, type UffdMsg, type FillAnswer } from '../sys/index.js';
import { Pending, type Piece } from './pending.js';
import type { PageSource } from './page-source.js';
import { PAGE_SIZE } from '../sys/uapi.js';
import { mark } from '../trace.js';

const P = PAGE_SIZE;
/** A fault brings in its page and the next ones of its piece, up to this much. */
const FAULT_WINDOW = 16 * P;
/** One background step: at most this much (the faults queued meanwhile wait for it). */
const FILL_STEP = 1 << 20;
/** Background steps run back to back for this long before the event loop gets a turn. */
const YIELD_NS = 1_000_000n;
const ESRCH = 3;
const DEBUG = !!process.env.TSNAP_LAZY_DEBUG;
const ENOENT = 2;

export interface PagerContext {
  fd: number;
  /** For the log: the restored pid, or "child of N". */
  name: string;
  pending: Pending;
  source: PageSource;
  /** Claimed by the background fetch in flight; events apply to it as to pending. */
  inflight?: Pending;
}

/** The background fetch in flight: faults are served while it reads. */
interface Background {
  ctx: PagerContext;
  src: number;
  len: number;
  result: { data: Buffer | null } | { err: unknown } | null;
  settled: Promise<void>;
}

export interface PagerOptions {
  log: (msg: string) => void;
  /** Pause between background steps (faults are still served at once): lets tests fork or kill mid-fill. */
  fillDelayMs?: number;
  /**
   * Told when a thread of the process starts (true) and stops (false)
   * waiting for pages that must come from a source with no synchronous
   * read (post-copy: the link). See the call.
   */
  onFaultWait?: (waiting: boolean) => void;
}

export interface PagerStats {
  faults: number;
  zeroFaults: number;
  bytesFaulted: number;
  bytesFilled: number;
  forks: number;
}

export class PagerFailure extends Error {}

export class Pager {
  readonly contexts: PagerContext[] = [];
  readonly stats: PagerStats = { faults: 0, zeroFaults: 0, bytesFaulted: 0, bytesFilled: 0, forks: 0 };
  private stopping = false;
  private retry: { ctx: PagerContext; addr: number }[] = [];
  private bg: Background | null = null;
  private polling: Promise<unknown> | null = null;
  private nextFillAt = 0;
  /** For the trace: background steps taken, uffd polls started. */
  private steps = 0;
  private yieldedAt = 0n;
  private polls = 0;
  /** Faults waiting on an asynchronous fetch (theirs, or the background one holding their page). */
  private faultWaits = 0;
  private waitsOnBackground = 0;

  constructor(private readonly opts: PagerOptions) {}

  add(ctx: PagerContext): void {
    this.contexts.push(ctx);
  }

  /** Asks run() to return at its next step, with every uffd still open (a handover). */
  stop(): void {
    this.stopping = true;
  }

  /** Undoes stop() (a handover that did not happen). */
  resume(): void {
    this.stopping = false;
  }

  get pendingBytes(): number {
    return this.contexts.reduce((n, c) => n + c.pending.bytes, 0);
  }

  /**
   * Runs until every page is in ('done': the uffds are closed) or stop()
   * ('stopped'). Rejects with PagerFailure when pages cannot be had: the
   * caller must then kill the processes, whose faults would never be answered.
   */
  async run(): Promise<'done' | 'stopped'> {
    try {
      return await this.loop();
    } finally {
      // Failed (or stopped) with a fault still waiting: its thread is the guard's or the next host's now.
      if (this.faultWaits > 0) { this.faultWaits = 0; this.waitsOnBackground = 0; this.opts.onFaultWait?.(false); }
    }
  }

  private async loop(): Promise<'done' | 'stopped'> {
    for (;;) {
      if (this.stopping && !this.bg) return 'stopped';
      const faults = this.readAll();
      for (const f of faults) await this.serve(f.ctx, f.addr);
      if (faults.length) continue;
      if (this.bg?.result) {
        this.completeBackground();
        // A cached chunk resolves at once: let the event loop's other work (a
        // handover, tsnap waiting for its process, a post-copy's socket) run
        // between steps, once per YIELD_MS of them. A turn per step made a
        // post-copy's scattered set (one step per range: 3 320 at 1 GiB,
        // 100 MB/s) take 0.4 ms a step at load 12; faults are read at
        // every step either way (readAll above).
        if (process.hrtime.bigint() - this.yieldedAt >= YIELD_NS) {
          await new Promise((resolve) => setImmediate(resolve));
          this.yieldedAt = process.hrtime.bigint();
        }
        continue;
      }
      if (!this.bg && !this.stopping) {
        const ctx = this.contexts.find((c) => !c.pending.empty);
        if (!ctx) {
          this.closeAll();
          mark(`lazy: fill done (${this.steps} background steps, ${this.polls} polls)`);
          return 'done';
        }
        const wait = this.nextFillAt - Date.now();
        if (wait <= 0) {
          this.startBackground(ctx);
          continue;
        }
        await this.pollUffds(wait);
        continue;
      }
      // A fetch in flight (or a handover waiting for none): wake for it or for the next message.
      await Promise.race([this.bg?.settled ?? new Promise(() => {}), this.pollUffds(this.bg ? 50 : 20)]);
    }
  }

  /** One poll() of every uffd at a time (it occupies a pool thread until it returns). */
  private pollUffds(timeoutMs: number): Promise<unknown> {
    if (!this.polling) this.polls++;
    this.polling ??= pollAsync(this.contexts.map((c) => c.fd), timeoutMs).finally(() => { this.polling = null; });
    return this.polling;
  }

  private startBackground(ctx: PagerContext): void {
    const piece = ctx.pending.claimFirst(FILL_STEP)!;
    if (this.steps++ === 0) mark('lazy: first background step');
    (ctx.inflight ??= new Pending()).unclaim(piece);
    this.stats.bytesFilled += piece.len;
    const bg: Background = { ctx, src: piece.src, len: piece.len, result: null, settled: Promise.resolve() };
    bg.settled = ctx.source.fetch(piece.src, piece.len).then((data) => { bg.result = { data }; }, (err) => { bg.result = { err }; });
    this.bg = bg;
    if (this.opts.fillDelayMs) this.nextFillAt = Date.now() + this.opts.fillDelayMs;
  }

  private waitBegins(): void {
    if (this.faultWaits++ === 0) this.opts.onFaultWait?.(true);
  }

  private waitEnds(): void {
    if (--this.faultWaits === 0) this.opts.onFaultWait?.(false);
  }

  /** Places the background fetch's data wherever its pieces are now (mremap may have moved them). */
  private completeBackground(): void {
    const bg = this.bg!;
    this.bg = null;
    try {
      this.placeBackground(bg);
    } finally {
      // The faults that waited on it are woken by its copy (or fail with it).
      for (; this.waitsOnBackground > 0; this.waitsOnBackground--) this.waitEnds();
    }
  }

  private placeBackground(bg: Background): void {
    const r = bg.result!;
    if ('err' in r) {
      if (!this.contexts.includes(bg.ctx)) return;
      bg.ctx.inflight!.takeBySrc(bg.src, bg.len);
      throw new PagerFailure(`the pages at 0x${bg.src.toString(16)} (${bg.len} bytes) cannot be had: ${(r.err as Error)?.message ?? r.err}`);
    }
    try {
      if (!this.contexts.includes(bg.ctx)) return;
      const pieces = bg.ctx.inflight!.takeBySrc(bg.src, bg.len);
      for (const p of pieces) {
        if (!this.contexts.includes(bg.ctx)) return;
        this.copyPiece(bg.ctx, p, r.data, p.src - bg.src);
      }
    } finally {
      // Copied (UFFDIO_COPY is synchronous): the source may reuse the chunk's memory.
      if (r.data) bg.ctx.source.release?.(r.data);
    }
  }

  /** Applies every event queued on every uffd; returns the faults, in order. */
  private readAll(): { ctx: PagerContext; addr: number }[] {
    const faults = this.retry;
    this.retry = [];
    for (const ctx of [...this.contexts]) {
      let msgs: UffdMsg[];
      try {
        msgs = readUffdMsgs(ctx.fd);
      } catch (err) {
        throw new PagerFailure(`reading the userfaultfd of ${ctx.name}: ${(err as Error).message}`);
      }
      for (const m of msgs) {
        switch (m.event) {
          case 'fault': faults.push({ ctx, addr: m.addr }); break;
          case 'fork':
            // The child's memory is its parent's of this moment: what the
            // parent still lacks (in flight included), the child lacks too,
            // and gets from the same source.
            this.stats.forks++;
            this.contexts.push({ fd: m.fd, name: `a child of ${ctx.name}`, pending: Pending.union(ctx.pending, ctx.inflight ?? new Pending()), source: ctx.source });
            break;
          case 'remap': ctx.pending.move(m.from, m.to, m.len); ctx.inflight?.move(m.from, m.to, m.len); break;
          case 'remove': case 'unmap': ctx.pending.cut(m.start, m.end); ctx.inflight?.cut(m.start, m.end); break;
          default: this.opts.log(`lazy pager: unknown userfaultfd event 0x${m.code.toString(16)} from ${ctx.name}, ignored`);
        }
      }
    }
    return faults;
  }

  private async serve(ctx: PagerContext, addr: number): Promise<void> {
    if (DEBUG) this.opts.log(`lazy pager: fault at 0x${addr.toString(16)} of ${ctx.name}`);
    mark(`lazy: fault 0x${addr.toString(16)}`);
    if (!this.contexts.includes(ctx)) return;
    this.stats.faults++;
    const piece = ctx.pending.claim(addr, FAULT_WINDOW);
    if (piece) {
      this.stats.bytesFaulted += piece.len;
      // A thread of the process is stopped until this fetch answers: on a
      // loaded host the wake-up for its answer waited 593 ms once, this
      // thread in the normal class (docs/performance.md); the hook may
      // raise it for that long (and no longer).
      const waits = !ctx.source.fetchNow;
      if (waits) this.waitBegins();
      try {
        await this.place(ctx, piece);
      } finally {
        if (waits) this.waitEnds();
      }
      mark(`lazy: fault 0x${addr.toString(16)} served`);
      return;
    }
    // Being fetched in the background: its copy wakes the thread (and ends the wait).
    if (ctx.inflight?.has(addr)) {
      if (!ctx.source.fetchNow && this.bg) { this.waitsOnBackground++; this.waitBegins(); }
      return;
    }
    // Nothing stored there (never touched at the dump, or new since): zero.
    // Or filled already, after the fault was queued: then only wake it.
    const page = addr - (addr % P);
    const r = uffdZeropage(ctx.fd, page, P);
    if (r.errno === 0) { this.stats.zeroFaults++; return; }
    if (r.errno === UFFD_EEXIST) { uffdWake(ctx.fd, page, P); return; }
    if (r.errno === UFFD_EAGAIN) { this.retry.push({ ctx, addr }); return; }
    if (r.errno === ESRCH) { this.drop(ctx); return; }
    // ENOENT: not registered any more (unmapped meanwhile): its thread is woken by the unmap.
    if (r.errno !== ENOENT) this.opts.log(`lazy pager: zero page at 0x${page.toString(16)} of ${ctx.name}: ${errnoName(r.errno)}`);
  }

  /** Fetches a claimed piece and puts it in place; what the address space's changes hold back goes back to pending. */
  private async place(ctx: PagerContext, piece: Piece): Promise<void> {
    let data: Buffer | null;
    try {
      // A fault waits on this: read here, without the pool's round trips, where the source can.
      data = ctx.source.fetchNow ? ctx.source.fetchNow(piece.src, piece.len) : await ctx.source.fetch(piece.src, piece.len);
    } catch (err) {
      throw new PagerFailure(`the pages at 0x${piece.src.toString(16)} (${piece.len} bytes) cannot be had: ${(err as Error).message}`);
    }
    if (DEBUG) this.opts.log(`lazy pager: fetched 0x${piece.src.toString(16)}+${piece.len} (${data ? 'data' : 'zero'})`);
    // No await from here on: no event can be read between the fetch's end and the copy.
    try {
      if (!this.contexts.includes(ctx)) return;
      this.copyPiece(ctx, piece, data, 0);
    } finally {
      if (data) ctx.source.release?.(data);
    }
  }

  /** Copies `piece` from `data` (at `at`: null for zeros); what the address space's changes hold back goes back to pending. */
  private copyPiece(ctx: PagerContext, piece: Piece, data: Buffer | null, at: number): void {
    let done = 0;
    while (done < piece.len) {
      const r: FillAnswer = data
        ? uffdCopy(ctx.fd, piece.dest + done, data, at + done, piece.len - done)
        : uffdZeropage(ctx.fd, piece.dest + done, piece.len - done);
      if (DEBUG) this.opts.log(`lazy pager: fill 0x${(piece.dest + done).toString(16)}+${piece.len - done}: ${r.done} ${r.errno}`);
      if (r.errno === 0) return;
      done += r.done;
      if (r.done > 0) continue;
      if (r.errno === UFFD_EEXIST) { done += P; continue; }
      if (r.errno === UFFD_EAGAIN) {
        // An event is waiting to be read: it may move or drop these pages.
        ctx.pending.unclaim({ dest: piece.dest + done, src: piece.src + done, len: piece.len - done });
        return;
      }
      if (r.errno === ESRCH) { this.drop(ctx); return; }
      if (r.errno === ENOENT) {
        // One fill must stay inside one VMA: the program may have split
        // this piece (mprotect) since. Page by page up to the boundary; a
        // page that fails alone is gone (unmapped: its event follows).
        if (piece.len - done > P) {
          const one = data ? uffdCopy(ctx.fd, piece.dest + done, data, at + done, P) : uffdZeropage(ctx.fd, piece.dest + done, P);
          if (one.errno === UFFD_EAGAIN) continue;
        }
        done += P;
        continue;
      }
      throw new PagerFailure(`UFFDIO_COPY at 0x${(piece.dest + done).toString(16)} of ${ctx.name}: ${errnoName(r.errno)}`);
    }
  }

  /** Its address space is gone (the process exited or exec'd). */
  private drop(ctx: PagerContext): void {
    const i = this.contexts.indexOf(ctx);
    if (i < 0) return;
    this.contexts.splice(i, 1);
    closeRaw(ctx.fd);
  }

  private closeAll(): void {
    for (const c of [...this.contexts]) this.drop(c);
  }
}

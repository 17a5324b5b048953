/**
 * The receiver's half of post-copy: a PageSource (src/lazy) whose pages
 * come from the migration's source over the connection. The source pushes
 * the whole set in address order; a fetch of pages not here yet asks for
 * them (PAGE_REQUEST), once, and waits for them, pushed or answered alike.
 * Pages stay until the end: a child forked before the fill ended is filled
 * from the same source, and may want the same pages again.
 *
 * A lost connection fails every fetch waiting and every later one: the
 * pager gives up and its guard kills the process, which cannot go on
 * without those pages.
 */
import type { Socket } from 'node:net';
import { FrameReader, Msg, encodeDoc, send } from './wire.js';
import { decodePageData } from './postcopy-wire.js';
import { TsnapError } from '../errors.js';
import { intersect, normalize, type Range } from '../image/ranges.js';
import type { Extent, PageSource } from '../lazy/page-source.js';
import { PAGE_SIZE } from '../sys/uapi.js';
import { mark } from '../trace.js';

const P = PAGE_SIZE;

interface Waiter {
  start: number;
  len: number;
  resolve: (b: Buffer) => void;
  reject: (e: unknown) => void;
}

export class RemotePageSource implements PageSource {
  private readonly set: Range[];
  private readonly pages = new Map<number, Buffer>();
  private readonly asked = new Set<number>();
  private waiters: Waiter[] = [];
  private failure: Error | null = null;
  readonly setPages: number;
  requests = 0;
  /** When the last page of the set arrived (ms since the epoch), or null. */
  allInAt: number | null = null;

  constructor(private readonly sock: Socket, set: readonly Range[]) {
    this.set = normalize(set);
    this.setPages = this.set.reduce((n, r) => n + (r.end - r.start) / P, 0);
  }

  get pagesIn(): number {
    return this.pages.size;
  }

  extents(): Extent[] {
    return this.set.map((r) => ({ start: r.start, len: r.end - r.start }));
  }

  /** Reads PAGE_DATA frames until the stream ends; any other frame or a broken stream fails the source. */
  async pump(reader: FrameReader): Promise<void> {
    try {
      for (;;) {
        const f = await reader.next();
        if (!f) throw new TsnapError('targetFailed', 'the source closed the connection');
        if (f.type !== Msg.PageData) throw new TsnapError('badImage', `migration stream: unexpected ${Msg[f.type] ?? f.type} message while post-copy pages arrive`);
        const { start, data } = decodePageData(f.payload);
        if (intersect([{ start, end: start + data.length }], this.set).reduce((n, r) => n + r.end - r.start, 0) !== data.length) {
          throw new TsnapError('badImage', `migration stream: PAGE_DATA at 0x${start.toString(16)} is outside the post-copy set`);
        }
        for (let at = 0; at < data.length; at += P) this.pages.set(start + at, data.subarray(at, at + P));
        if (this.pages.size === this.setPages && this.allInAt === null) { this.allInAt = Date.now(); mark('postcopy: all in'); }
        this.wakeWaiters();
      }
    } catch (err) {
      // All in: the end of the stream is the source's part done.
      if (this.allInAt !== null && err instanceof TsnapError && err.kind === 'targetFailed') return;
      this.fail(err as Error);
    }
  }

  fail(err: Error): void {
    this.failure ??= err;
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w.reject(this.failure);
  }

  fetch(start: number, len: number): Promise<Buffer | null> {
    const ready = this.assemble(start, len);
    if (ready) return Promise.resolve(ready);
    if (this.failure) return Promise.reject(this.failure);
    const missing: [number, number][] = [];
    for (let a = start; a < start + len; a += P) {
      if (this.pages.has(a) || this.asked.has(a)) continue;
      this.asked.add(a);
      const last = missing[missing.length - 1];
      if (last && last[0] + last[1] === a) last[1] += P;
      else missing.push([a, P]);
    }
    if (missing.length) {
      this.requests++;
      mark(`postcopy: request 0x${missing[0][0].toString(16)} (${missing.length} ranges)`);
      send(this.sock, encodeDoc(Msg.PageRequest, { ranges: missing })).catch((e) => this.fail(e as Error));
    }
    return new Promise((resolve, reject) => this.waiters.push({ start, len, resolve, reject }));
  }

  /** The bytes of [start, start+len) if every page is here: one view when they arrived together. */
  private assemble(start: number, len: number): Buffer | null {
    const first = this.pages.get(start);
    if (!first) return null;
    for (let a = start + P; a < start + len; a += P) if (!this.pages.has(a)) return null;
    const last = this.pages.get(start + len - P)!;
    if (last.buffer === first.buffer && last.byteOffset - first.byteOffset === len - P) return Buffer.from(first.buffer, first.byteOffset, len);
    const out = Buffer.allocUnsafe(len);
    for (let a = 0; a < len; a += P) this.pages.get(start + a)!.copy(out, a);
    return out;
  }

  private wakeWaiters(): void {
    const still: Waiter[] = [];
    for (const w of this.waiters) {
      const b = this.assemble(w.start, w.len);
      if (b) w.resolve(b);
      else still.push(w);
    }
    this.waiters = still;
  }

  close(): void {
    this.fail(new TsnapError('targetFailed', 'the post-copy page source is closed'));
    this.pages.clear();
  }
}

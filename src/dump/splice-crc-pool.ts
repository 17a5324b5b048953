/**
 * CRCs of the one-copy dump's chunks on a thread of libuv's pool, in C
 * (tsnap_crc32_ranges in src/image/tsnap-crc32.c, called through koffi's
 * `.async`): the splice never brings the bytes into tsnap, so each stored
 * chunk is read back from the page cache, and on the second core that
 * read-back overlaps the main thread's next splices instead of adding to
 * the freeze. No V8 isolate (the worker of splice-crc.ts costs ~10 MiB of
 * RSS), and one call does the read and the CRC of a whole batch, so no
 * step of it waits for the busy main thread to dispatch it.
 *
 * One call in flight at a time: chunks stored meanwhile queue up and go
 * in the next call, made when the main thread's loop next turns (between
 * remote steps). A second call in flight would only take CPU from the
 * splices on two cores.
 */
import { openSync, closeSync } from 'node:fs';
import { nativeCrc32Ranges, type Crc32Ranges } from '../sys/crc32.js';
import { SysError } from '../sys/index.js';

/** A piece read back stays in the CPU's cache (1 MiB of L2 here) until its CRC is taken. */
const PIECE = 256 << 10;
/** Ranges one call takes at most: a call should end soon after the splices it trails. */
const MAX_BATCH = 64;

interface Ask { position: number; len: number; resolve: (crc: number) => void; reject: (err: unknown) => void }

export class PoolCrc {
  private queue: Ask[] = [];
  private inFlight: Ask[] | null = null;
  private failure: unknown = null;
  private closing = false;
  private fd: number;
  private readonly buf = Buffer.allocUnsafeSlow(PIECE);
  private ranges = Buffer.alloc(MAX_BATCH * 16);
  private crcs = Buffer.alloc(MAX_BATCH * 4);
  private drained: (() => void) | null = null;

  private constructor(private readonly fn: Crc32Ranges, path: string) {
    this.fd = openSync(path, 'r');
  }

  /** A reader of the pages file `path` (it must exist), or null without the C library. */
  static open(path: string): PoolCrc | null {
    const fn = nativeCrc32Ranges();
    return fn ? new PoolCrc(fn, path) : null;
  }

  /** The CRC-32 of `len` bytes at `position` of the file, as stored now. */
  crc(position: number, len: number): Promise<number> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closing) return Promise.reject(new Error('the CRC reader is closed'));
    return new Promise((resolve, reject) => {
      this.queue.push({ position, len, resolve, reject });
      this.dispatch();
    });
  }

  /** Resolves once every CRC asked for is answered; the file is then closed. */
  end(): Promise<void> {
    this.closing = true;
    if (!this.inFlight && this.queue.length === 0) { this.closeFd(); return Promise.resolve(); }
    return new Promise((resolve) => { this.drained = resolve; });
  }

  /** CRCs not yet answered fail; the file is closed once the call in flight returns (it reads it). */
  abort(): void {
    this.closing = true;
    this.failure ??= new Error('aborted');
    for (const q of this.queue) q.reject(this.failure);
    this.queue = [];
    if (!this.inFlight) this.closeFd();
  }

  private dispatch(): void {
    if (this.inFlight || this.queue.length === 0 || this.fd < 0) return;
    const batch = this.queue.splice(0, MAX_BATCH);
    batch.forEach((q, i) => {
      this.ranges.writeBigUInt64LE(BigInt(q.position), i * 16);
      this.ranges.writeBigUInt64LE(BigInt(q.len), i * 16 + 8);
    });
    this.inFlight = batch;
    this.fn.async(this.fd, this.ranges, batch.length, this.crcs, this.buf, PIECE, (err, ret) => this.answered(batch, err, ret));
  }

  private answered(batch: Ask[], err: unknown, ret: number): void {
    this.inFlight = null;
    const failed = err ?? (ret < 0 ? new SysError('pread of a chunk just stored', -ret) : null);
    if (failed) {
      this.failure ??= failed;
      for (const q of [...batch, ...this.queue]) q.reject(failed);
      this.queue = [];
    } else {
      batch.forEach((q, i) => q.resolve(this.crcs.readUInt32LE(i * 4)));
    }
    if (this.queue.length && !this.failure) { this.dispatch(); return; }
    if (this.closing) {
      this.closeFd();
      const d = this.drained;
      this.drained = null;
      d?.();
    }
  }

  private closeFd(): void {
    if (this.fd >= 0) { try { closeSync(this.fd); } catch { /* closed */ } this.fd = -1; }
  }
}

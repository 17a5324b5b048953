/**
 * The copy-on-write fault server's native thread (src/dump/tsnap-cow.c,
 * built to dist/native/libtsnap-cow.so by `npm run build`), loaded on first
 * use. Pointers handed over are addresses of SharedArrayBuffer memory: its
 * backing store never moves, and the caller keeps it alive until stop().
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { koffi } from './koffi.js';
import { SysError } from './errors.js';

type Addr = bigint;
interface Lib {
  start(ctl: Addr, times: Addr): unknown;
  goEarly(c: unknown, uffd: number, wakeFd: number, log: Addr, logLen: number, huge: Buffer, nHuge: number): void;
  go(c: unknown, pid: number, uffd: number, wakeFd: number, ranges: Buffer, nRanges: number, slots: Addr, store: Addr, capacity: number,
    free: Addr, blockPages: number, protect: Buffer, nProtect: number): number;
  wait(c: unknown, index: number, value: number, ms: number): void;
  stop(c: unknown): void;
}

let lib: Lib | undefined;

function load(): Lib {
  if (lib) return lib;
  // dist/src/sys/ beside dist/native/; src/sys/ (the tests) two levels under it.
  const path = ['../../native/libtsnap-cow.so', '../../dist/native/libtsnap-cow.so'].map((rel) => fileURLToPath(new URL(rel, import.meta.url))).find(existsSync);
  if (!path) throw new SysError('load libtsnap-cow.so (not built: npm run build)', 2);
  const so = koffi.load(path);
  const f = (decl: string) => so.func(decl) as never;
  lib = {
    start: f('void *tsnap_cow_start(uintptr_t ctl, uintptr_t times)'),
    goEarly: f('void tsnap_cow_go_early(void *c, int uffd, int wake_fd, uintptr_t log, uint32_t log_len, const void *huge, uint32_t nhuge)'),
    go: f('int tsnap_cow_go(void *c, int pid, int uffd, int wake_fd, const void *ranges, uint32_t nranges, uintptr_t slots, uintptr_t store, uint32_t capacity, uintptr_t freering, uint32_t block_pages, const void *protect, uint32_t nprotect)'),
    wait: f('void tsnap_cow_wait(void *c, uint32_t i, int32_t v, int ms)'),
    stop: f('void tsnap_cow_stop(void *c)'),
  };
  return lib;
}

const addr = (sab: SharedArrayBuffer): Addr => koffi.address(Buffer.from(sab)) as bigint;

/** u64 fields, `width` per row, from rows of numbers. */
function u64s(rows: readonly (readonly number[])[]): Buffer {
  const b = Buffer.alloc(Math.max(8, rows.reduce((n, r) => n + r.length, 0) * 8));
  let o = 0;
  for (const r of rows) for (const v of r) { b.writeBigUInt64LE(BigInt(v), o); o += 8; }
  return b;
}

/**
 * The thread, asleep until goEarly() or go(). `ctl` and `times` are the
 * Int32 / Float64 words of src/dump/cow-shared.ts.
 */
export class CowServerThread {
  private handle: unknown;
  private readonly lib: Lib;

  constructor(ctl: SharedArrayBuffer, times: SharedArrayBuffer) {
    this.lib = load();
    koffi.errno(0);
    this.handle = this.lib.start(addr(ctl), addr(times));
    if (!this.handle) throw new SysError('pthread_create (copy-on-write fault server)', koffi.errno() || 12);
  }

  /** huge: sorted ranges; log: Float64 entries. */
  goEarly(uffd: number, wakeFd: number, log: SharedArrayBuffer, huge: readonly { start: number; end: number }[]): void {
    this.lib.goEarly(this.handle, uffd, wakeFd, addr(log), log.byteLength / 8, u64s(huge.map((r) => [r.start, r.end])), huge.length);
  }

  go(c: {
    pid: number; uffd: number; wakeFd: number; ranges: readonly { start: number; end: number; first: number }[]; slots: SharedArrayBuffer;
    store: SharedArrayBuffer; free: SharedArrayBuffer; blockPages: number; protect: readonly { start: number; len: number }[];
  }): void {
    const e = this.lib.go(this.handle, c.pid, c.uffd, c.wakeFd, u64s(c.ranges.map((r) => [r.start, r.end, r.first])), c.ranges.length, addr(c.slots),
      addr(c.store), c.store.byteLength / 4096, addr(c.free), c.blockPages, u64s(c.protect.map((r) => [r.start, r.len])), c.protect.length);
    if (e) throw new SysError('configure the copy-on-write fault server', e);
  }

  /** Sleeps while ctl[index] === value, up to ms (a futex wait: the thread wakes it). */
  wait(index: number, value: number, ms: number): void {
    this.lib.wait(this.handle, index, value, ms);
  }

  /** Asks the thread to stop, joins it; safe more than once. The caller has written the wake pipe's byte. */
  stop(): void {
    if (!this.handle) return;
    const h = this.handle;
    this.handle = null;
    this.lib.stop(h);
  }
}

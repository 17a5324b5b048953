/**
 * CRC-32 through tsnap's own small C library (src/image/tsnap-crc32.c,
 * built to dist/native/libtsnap-crc32.so by `npm run build`), loaded on
 * first use. Null when it is not built: the caller falls back. The same
 * library holds the pool's splices (src/sys/tsnap-splice.c, splice.ts).
 */
import { koffi } from './koffi.js';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

type Crc32 = (crc: number, data: Buffer, length: number) => number;

/**
 * CRCs of ranges of a file read back through `buf` (tsnap_crc32_ranges):
 * `ranges` holds (offset, length) pairs of u64, `crcs` gets one u32 each.
 * 0 or -errno. `.async` runs it on libuv's pool; every buffer must stay
 * alive and the fd open until its callback.
 */
export interface Crc32Ranges {
  (fd: number, ranges: Buffer, n: number, crcs: Buffer, buf: Buffer, len: number): number;
  async(fd: number, ranges: Buffer, n: number, crcs: Buffer, buf: Buffer, len: number, cb: (err: unknown, ret: number) => void): void;
}

let lib: ReturnType<typeof koffi.load> | null | undefined;
let fn: Crc32 | null | undefined;
let rangesFn: Crc32Ranges | null | undefined;

/** The library itself (null when not built): map-fill.ts binds its fill there. */
export function load(): ReturnType<typeof koffi.load> | null {
  if (lib === undefined) {
    lib = null;
    // dist/src/sys/ beside dist/native/; src/sys/ (the tests) two levels under it.
    const path = ['../../native/libtsnap-crc32.so', '../../dist/native/libtsnap-crc32.so'].map((rel) => fileURLToPath(new URL(rel, import.meta.url))).find(existsSync);
    if (path) {
      try { lib = koffi.load(path); } catch { /* unusable: the fallback */ }
    }
  }
  return lib;
}

export function nativeCrc32(): Crc32 | null {
  if (fn === undefined) {
    fn = null;
    try { fn = (load()?.func('uint32_t tsnap_crc32(uint32_t crc, const void *p, size_t n)') as Crc32 | undefined) ?? null; } catch { /* the fallback */ }
  }
  return fn;
}

/** Null when the library is not built (or is an older build without it). */
export function nativeCrc32Ranges(): Crc32Ranges | null {
  if (rangesFn === undefined) {
    rangesFn = null;
    try {
      rangesFn = (load()?.func('int tsnap_crc32_ranges(int fd, const void *ranges, uint32_t n, void *crcs, void *buf, size_t len)') as Crc32Ranges | undefined) ?? null;
    } catch { /* the fallback */ }
  }
  return rangesFn;
}

/**
 * Reads `len` bytes of `fd` at `off` into `buf` and writes their CRC-32
 * into `crc` (4 bytes, little-endian) (tsnap_pread_crc32): the bytes read,
 * fewer only at the end of the file, or -errno. `.async` runs it on libuv's
 * pool; `buf` and `crc` must stay alive and the fd open until its callback.
 */
export interface PreadCrc32 {
  (fd: number, buf: Buffer, len: number, off: number, crc: Buffer): number | bigint;
  async(fd: number, buf: Buffer, len: number, off: number, crc: Buffer, cb: (err: unknown, ret: number | bigint) => void): void;
}

let preadCrcFn: PreadCrc32 | null | undefined;

/** Null when the library is not built (or is an older build without it). */
export function nativePreadCrc32(): PreadCrc32 | null {
  if (preadCrcFn === undefined) {
    preadCrcFn = null;
    try {
      preadCrcFn = (load()?.func('int64_t tsnap_pread_crc32(int fd, void *buf, size_t len, uint64_t off, void *crc)') as PreadCrc32 | undefined) ?? null;
    } catch { /* the fallback */ }
  }
  return preadCrcFn;
}

/** tsnap_splice_pipes (src/sys/tsnap-splice.c): 0 or -1; `.async` on libuv's pool. */
export interface SplicePipes {
  (pipes: Buffer, fd: number, positions: Buffer, lens: Buffer, n: number, done: Buffer, rfd: number, want: Buffer | null, crcs: Buffer | null, buf: Buffer | null, buflen: number): number;
  async(pipes: Buffer, fd: number, positions: Buffer, lens: Buffer, n: number, done: Buffer, rfd: number, want: Buffer | null, crcs: Buffer | null, buf: Buffer | null, buflen: number, cb: (err: unknown, ret: number) => void): void;
}

let spliceFn: SplicePipes | null | undefined;

/** Null when the library is not built (or is an older build without it). */
export function nativeSplicePipes(): SplicePipes | null {
  if (spliceFn === undefined) {
    spliceFn = null;
    try {
      spliceFn = (load()?.func('int tsnap_splice_pipes(const int32_t *pipes, int fd, const int64_t *positions, const int64_t *lens, uint32_t n, int64_t *done, int rfd, const uint8_t *want, uint32_t *crcs, void *buf, size_t buflen)') as SplicePipes | undefined) ?? null;
    } catch { /* the fallback */ }
  }
  return spliceFn;
}

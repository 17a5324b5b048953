/**
 * CRC-32 through tsnap's own small C library (src/image/tsnap-crc32.c,
 * built to dist/native/libtsnap-crc32.so by `npm run build`), loaded on
 * first use. Null when it is not built: the caller falls back.
 */
import { koffi } from './koffi.js';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

type Crc32 = (crc: number, data: Buffer, length: number) => number;

let fn: Crc32 | null | undefined;

export function nativeCrc32(): Crc32 | null {
  if (fn === undefined) {
    fn = null;
    // dist/src/sys/ beside dist/native/; src/sys/ (the tests) two levels under it.
    const path = ['../../native/libtsnap-crc32.so', '../../dist/native/libtsnap-crc32.so'].map((rel) => fileURLToPath(new URL(rel, import.meta.url))).find(existsSync);
    if (path) {
      try {
        fn = koffi.load(path).func('uint32_t tsnap_crc32(uint32_t crc, const void *p, size_t n)') as Crc32;
      } catch { /* unusable: the fallback */ }
    }
  }
  return fn;
}

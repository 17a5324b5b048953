/**
 * CRC-32 (IEEE 802.3, the zlib polynomial) over image data: every stored
 * byte of page data passes through it. node:zlib's is 0.42 s per GiB here;
 * tsnap's own C library (src/image/tsnap-crc32.c, PCLMULQDQ) 0.15-0.25 s,
 * loaded through the FFI once 16 MiB have been checksummed: loading koffi
 * and a library costs more than node:zlib spends on a small process's few
 * MiB (docs/performance.md, "Small processes"). Not built, @node-rs/crc32
 * (as fast, but ~3.3 MiB more RSS) does it.
 */
import { createRequire } from 'node:module';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { nativeCrc32 } from '../sys/crc32.js';

/** Bytes checksummed by node:zlib before the faster code is loaded. */
const SLOW_BYTES = 16 << 20;

let slowBytes = 0;
let fast: ((data: Buffer, initial: number) => number) | null = null;

function loadFast(): (data: Buffer, initial: number) => number {
  const own = nativeCrc32();
  if (own) return (data, initial) => own(initial, data, data.length);
  const addon = (createRequire(import.meta.url)('@node-rs/crc32') as typeof import('@node-rs/crc32')).crc32;
  return (data, initial) => addon(data, initial);
}

export function crc32(data: Buffer, initial = 0): number {
  // node:zlib gives 0 for an empty buffer whatever the initial value (zlib's NULL case).
  if (data.length === 0) return initial >>> 0;
  if (!fast) {
    slowBytes += data.length;
    if (slowBytes <= SLOW_BYTES) return zlibCrc32(data, initial) >>> 0;
    fast = loadFast();
  }
  return fast(data, initial) >>> 0;
}

/**
 * CRC-32 (IEEE 802.3, the zlib polynomial) over image data. @node-rs/crc32
 * computes the same value as node:zlib's crc32 about three times as fast
 * here (folding with PCLMULQDQ: 0.14 against 0.42 s per GiB), which
 * matters because every stored byte of page data passes through it. But
 * loading it costs ~3.8 MiB of RSS and a few ms (a Rust addon), more than
 * node:zlib spends on the first MiBs: a small process's dump or restore
 * never loads it (docs/performance.md, "Small processes").
 */
import { createRequire } from 'node:module';
import { crc32 as zlibCrc32 } from 'node:zlib';

/** Bytes checksummed by node:zlib before the faster addon is loaded. */
const SLOW_BYTES = 16 << 20;

let slowBytes = 0;
let fast: ((data: Buffer, initial?: number) => number) | null = null;

export function crc32(data: Buffer, initial = 0): number {
  if (!fast) {
    slowBytes += data.length;
    if (slowBytes <= SLOW_BYTES) return zlibCrc32(data, initial) >>> 0;
    fast = (createRequire(import.meta.url)('@node-rs/crc32') as typeof import('@node-rs/crc32')).crc32;
  }
  return fast(data, initial) >>> 0;
}

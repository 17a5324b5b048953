/**
 * CRC-32 (IEEE 802.3, the zlib polynomial) over image data. @node-rs/crc32
 * computes the same value as node:zlib's crc32 about twice as fast here
 * (folding with PCLMULQDQ), which matters because every stored byte of page
 * data passes through it.
 */
import { crc32 as fastCrc32 } from '@node-rs/crc32';

export function crc32(data: Buffer, initial = 0): number {
  return fastCrc32(data, initial) >>> 0;
}

/**
 * lz4-napi, loaded on first use: a dump compresses with liblz4
 * (sys/lz4.ts) and never needs it, and loading it costs the tool ~5 MiB of
 * RSS and a few ms of start.
 */
import { createRequire } from 'node:module';

type Lz4Napi = typeof import('lz4-napi');
let mod: Lz4Napi | null = null;

export function lz4napi(): Lz4Napi {
  return (mod ??= createRequire(import.meta.url)('lz4-napi') as Lz4Napi);
}

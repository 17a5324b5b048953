/**
 * The one-copy page fill, for images whose chunks are all stored
 * uncompressed: each chunk's pages file is mapped read-only, and one native
 * call per chunk (tsnap_crc_writev) takes the CRC of each 256 KiB piece
 * from the page cache and writes that piece into the new task with
 * process_vm_writev, from the mapping, while it is in this CPU's cache.
 * The chunked fill (page-filler.ts) copies every byte twice instead
 * (pread into tsnap's buffer, then into the task).
 *
 * What is written before a chunk's CRC is compared is written into a task
 * that has never run: a mismatch fails the restore and the task is killed.
 * The CRC and the write read the same page-cache bytes microseconds apart;
 * tsnap never rewrites an image in place, and the files are 0600 in 0700
 * directories, so only root, rewriting the file during the restore, could
 * slip bytes in between: the check is against damage at rest, as for the
 * chunked fill's read.
 */
import { nativeCrcWritev, type CrcWritev } from '../sys/map-fill.js';
import type { PageFileReader } from '../image/page-file.js';
import type { ResolvedRun } from '../image/chain-index.js';
import type { Image } from '../image/image-reader.js';
import { TsnapError } from '../errors.js';
import { errnoName } from '../sys/errors.js';
import { PAGE_SIZE } from '../sys/uapi.js';
import type { RemoteSyscaller } from '../inject/remote-syscall.js';
import { Populator, populateByChunk } from './populator.js';

/** Chunks between two turns of the event loop (others' callbacks: a library user's, a server's). */
const YIELD_EVERY = 64;
const EFAULT = 14;
/** Chunks written at once on the pool (TSNAP_FILL_MAP_INFLIGHT; 0: on tsnap's thread). */
const DEFAULT_INFLIGHT = 2;

/**
 * The native call, when this fill applies: every chunk of the chain
 * uncompressed (lz4 chunks are decompressed into buffers), the library
 * built, and not switched off (TSNAP_FILL_MAP=0: the chunked fill, for
 * A/B in one build).
 */
export function mapFillFor(chain: readonly Image[]): CrcWritev | null {
  if (process.env.TSNAP_FILL_MAP === '0') return null;
  if (!chain.every((c) => c.pagemap.chunks.every((ch) => ch.codec === 'none'))) return null;
  return nativeCrcWritev();
}

/** Two 32-bit halves: a BigInt per field costs more than the copy of a page. */
function putU64(b: Buffer, at: number, v: number): void {
  b.writeUInt32LE(v % 0x100000000, at);
  b.writeUInt32LE(Math.floor(v / 0x100000000), at + 4);
}

export interface MapFillState {
  populator: Populator | null;
  /** Calls on the pool still running: waited for before the mappings and the task go. */
  running?: Set<Promise<void>>;
}

/**
 * Chunk by chunk in the order of their first run, like fillByChunk.
 * `byChunk`: the resolved runs of each chunk (image * 2^32 + chunk), in
 * address order. Returns the pages written.
 */
export async function fillMapped(pid: number, native: CrcWritev, byChunk: Map<number, ResolvedRun[]>, readerOf: (image: number) => PageFileReader, sc: RemoteSyscaller | null, state: MapFillState, onProgress?: (done: number, total: number) => void): Promise<number> {
  const order = [...byChunk.keys()];
  let total = 0;
  let maxRuns = 0;
  for (const runs of byChunk.values()) {
    for (const r of runs) total += r.pages * PAGE_SIZE;
    maxRuns = Math.max(maxRuns, runs.length);
  }
  const runsInOrder = order.flatMap((c, pos) => byChunk.get(c)!.map((run) => ({ run, pos })));
  const populator = (state.populator = new Populator(sc, sc ? populateByChunk(runsInOrder) : []));
  populator.begin();
  const populate = process.env.TSNAP_FILL_MAP_POPULATE === '1';
  // Chunks written at once on libuv's pool; 0: on this thread, one after the other.
  const inflight = Number(process.env.TSNAP_FILL_MAP_INFLIGHT ?? DEFAULT_INFLIGHT);
  const slots = Array.from({ length: Math.max(1, inflight) }, () => ({ pieces: Buffer.allocUnsafeSlow(Math.max(1, maxRuns) * 24), crc: Buffer.allocUnsafeSlow(4) }));
  const free = [...slots];
  const running = new Set<Promise<void>>();
  state.running = running;
  let pages = 0;
  let failure: unknown = null;
  /** Chunk `key`'s call into `slot`: its pieces and where to write them. */
  const prepare = (key: number, slot: (typeof slots)[number]) => {
    const image = Math.floor(key / 0x100000000);
    const chunk = key % 0x100000000;
    const reader = readerOf(image);
    // Offsets in increasing order, as the native call walks them (a chunk's runs are stored by address).
    const runs = [...byChunk.get(key)!].sort((a, b) => a.offset - b.offset);
    const entry = reader.entry(chunk);
    let want = 0;
    for (let i = 0; i < runs.length; i++) {
      const r = runs[i];
      const len = r.pages * PAGE_SIZE;
      if (r.offset + len > entry.storedLength) throw new TsnapError('badImage', `${reader.dir}/pagemap: a run at 0x${r.start.toString(16)} lies past the end of chunk ${chunk}; the image is damaged`);
      putU64(slot.pieces, i * 24, r.offset);
      putU64(slot.pieces, i * 24 + 8, r.start);
      putU64(slot.pieces, i * 24 + 16, len);
      want += len;
    }
    return { reader, chunk, runs, entry, want, src: reader.mappedChunk(chunk, populate) };
  };
  const finish = (c: ReturnType<typeof prepare>, got: number, crc: number) => {
    if (got === -EFAULT) c.reader.checkMapped(c.chunk, true, 0);
    if (got < 0) throw new TsnapError('restoreFailed', `process_vm_writev(${pid}): ${errnoName(-got)}`);
    if (got < c.want) {
      let at = 0;
      const failed = c.runs.find((r) => (at += r.pages * PAGE_SIZE) > got) ?? c.runs[0];
      throw new TsnapError('restoreFailed', `process_vm_writev failed at 0x${failed.start.toString(16)}`);
    }
    c.reader.checkMapped(c.chunk, false, crc);
    for (const r of c.runs) pages += r.pages;
    onProgress?.(pages * PAGE_SIZE, total);
  };
  for (let pos = 0; pos < order.length; pos++) {
    if (inflight === 0) {
      if (pos % YIELD_EVERY === YIELD_EVERY - 1) await new Promise<void>((resolve) => setImmediate(resolve));
      const c = prepare(order[pos], slots[0]);
      populator.ready(pos);
      finish(c, Number(native(pid, c.src, c.entry.storedLength, slots[0].pieces, c.runs.length, slots[0].crc)), slots[0].crc.readUInt32LE(0));
      continue;
    }
    while (free.length === 0) await Promise.race(running);
    if (failure) throw failure;
    const slot = free.pop()!;
    const c = prepare(order[pos], slot);
    populator.ready(pos);
    const call: Promise<void> = new Promise<number>((resolve, reject) => {
      native.async(pid, c.src, c.entry.storedLength, slot.pieces, c.runs.length, slot.crc, (err, ret) => (err ? reject(err) : resolve(Number(ret))));
    }).then((got) => finish(c, got, slot.crc.readUInt32LE(0))).catch((err) => { failure ??= err; }).finally(() => {
      running.delete(call);
      free.push(slot);
    });
    running.add(call);
  }
  while (running.size > 0) await Promise.race(running);
  if (failure) throw failure;
  return pages;
}

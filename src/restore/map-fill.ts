/**
 * The one-copy page fill, for images whose chunks are all stored
 * uncompressed: the pages files are mapped read-only, and native calls of
 * 8 chunks each (tsnap_crc_writev_many) take the CRC of each 256 KiB piece
 * from the page cache and write that piece into the new task with
 * process_vm_writev, from the mapping, while it is in this CPU's cache.
 * Two lanes on libuv's pool, each over half of the chunks; the task's
 * pages are faulted in by the writes (docs/performance.md, "Session 26").
 * The chunked fill (page-filler.ts) copies every byte twice instead
 * (pread into tsnap's buffer, then into the task).
 *
 * What is written before a chunk's CRC is compared is written into a task
 * that has never run: a mismatch fails the restore and the task is killed.
 * The CRC and the write read the same page-cache bytes microseconds apart;
 * tsnap never rewrites an image in place, and the files are 0600 in 0700
 * directories, so only root, rewriting the file during the restore, could
 * slip bytes in between: the check is against damage at rest, as for the
 * chunked fill's read. A file shrunk under the mapping: tsnap-mapfill.c's
 * SIGBUS guard.
 */
import { nativeCrcWritev, nativeCrcWritevMany, type CrcWritev } from '../sys/map-fill.js';
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
/**
 * Writers on the pool (TSNAP_FILL_MAP_LANES; 0: tsnap's own thread), and
 * chunks per call (TSNAP_FILL_MAP_BATCH). Three on this 2-core machine,
 * against two: the same CPU, and 0.88-0.97 of a 1 GiB restore's wall in
 * each of 12 runs at load 2-6, though no better than 0.78-1.25 in 8 at load
 * 4-9 (docs/performance.md, session 29). Not from the lanes' fixed shares
 * of the chunks (a slowed lane leaving a core idle at the end): two lanes
 * taking batches from a shared cursor were as slow as two with shares.
 * libuv's pool has four threads: one is left for the unmapping after the
 * fill.
 */
const DEFAULT_LANES = 3;
const DEFAULT_BATCH = 8;

/**
 * The native call, when this fill applies: every chunk of the chain
 * uncompressed (lz4 chunks are decompressed into buffers), the library
 * built, and not switched off (TSNAP_FILL_MAP=0: the chunked fill, for
 * A/B in one build).
 */
export function mapFillFor(chain: readonly Image[]): CrcWritev | null {
  if (process.env.TSNAP_FILL_MAP === '0') return null;
  if (!chain.every((c) => c.pagemap.chunks.every((ch) => ch.codec === 'none'))) return null;
  return nativeCrcWritevMany() ? nativeCrcWritev() : null;
}

let many: ReturnType<typeof nativeCrcWritevMany> | undefined;

/** A switch's value, or `dflt` when it is unset or not an integer in [min, max] (a typo never empties the fill). */
function envInt(name: string, dflt: number, min: number, max: number): number {
  const v = Number(process.env[name] ?? dflt);
  return Number.isInteger(v) && v >= min && v <= max ? v : dflt;
}

/** Two 32-bit halves: a BigInt per field costs more than the copy of a page. */
function putU64(b: Buffer, at: number, v: number): void {
  b.writeUInt32LE(v % 0x100000000, at);
  b.writeUInt32LE(Math.floor(v / 0x100000000), at + 4);
}

export interface MapFillState {
  populator: Populator | null;
  /** Calls on the pool still running: waited for before the mappings and the task go. */
  running?: Set<Promise<unknown>>;
}

/**
 * In the order of the chunks' first runs, like fillByChunk.
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
  const mapPopulate = process.env.TSNAP_FILL_MAP_POPULATE === '1';
  // Lanes of chunks written at once on libuv's pool, each a contiguous part of the order; 0: on this thread.
  const lanes = envInt('TSNAP_FILL_MAP_LANES', DEFAULT_LANES, 0, 4);
  const batch = envInt('TSNAP_FILL_MAP_BATCH', DEFAULT_BATCH, 1, 64);
  // The task populating its memory ahead (as for the chunked fill) cost more CPU than the
  // writer's own faults and bought no wall time (docs/performance.md, "Restore, 1 GiB"):
  // only with TSNAP_FILL_MAP_TASK_POPULATE=1, and one writer, whose order it follows.
  const taskPopulates = process.env.TSNAP_FILL_MAP_TASK_POPULATE === '1' && lanes <= 1 ? sc : null;
  const populator = (state.populator = new Populator(taskPopulates, taskPopulates ? populateByChunk(runsInOrder) : []));
  populator.begin();
  let pages = 0;
  /** Chunk `key`'s runs, by offset (as the native call walks them), checked against the chunk. */
  const runsOf = (key: number) => {
    const image = Math.floor(key / 0x100000000);
    const chunk = key % 0x100000000;
    const reader = readerOf(image);
    const runs = [...byChunk.get(key)!].sort((a, b) => a.offset - b.offset);
    const entry = reader.entry(chunk);
    let want = 0;
    for (const r of runs) {
      const len = r.pages * PAGE_SIZE;
      if (r.offset + len > entry.storedLength) throw new TsnapError('badImage', `${reader.dir}/pagemap: a run at 0x${r.start.toString(16)} lies past the end of chunk ${chunk}; the image is damaged`);
      want += len;
    }
    return { reader, chunk, runs, entry, want, src: reader.mappedChunk(chunk, mapPopulate) };
  };
  type Prepared = ReturnType<typeof runsOf>;
  const putPieces = (c: Prepared, into: Buffer, first: number) => {
    c.runs.forEach((r, i) => {
      const at = (first + i) * 24;
      putU64(into, at, r.offset);
      putU64(into, at + 8, r.start);
      putU64(into, at + 16, r.pages * PAGE_SIZE);
    });
  };
  const finish = (c: Prepared, got: number, crc: number) => {
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
  if (lanes === 0) {
    const pieces = Buffer.allocUnsafeSlow(Math.max(1, maxRuns) * 24);
    const crc = Buffer.allocUnsafeSlow(4);
    for (let pos = 0; pos < order.length; pos++) {
      if (pos % YIELD_EVERY === YIELD_EVERY - 1) await new Promise<void>((resolve) => setImmediate(resolve));
      const c = runsOf(order[pos]);
      putPieces(c, pieces, 0);
      populator.ready(pos);
      finish(c, Number(native(pid, c.src, c.entry.storedLength, pieces, c.runs.length, crc)), crc.readUInt32LE(0));
    }
    return pages;
  }
  const nativeMany = (many ??= nativeCrcWritevMany())!;
  let failure: unknown = null;
  const lane = async (from: number, to: number) => {
    const descs = Buffer.allocUnsafeSlow(batch * 32);
    const pieces = Buffer.allocUnsafeSlow(batch * Math.max(1, maxRuns) * 24);
    const done = Buffer.allocUnsafeSlow(batch * 16);
    for (let pos = from; pos < to && !failure; pos += batch) {
      const n = Math.min(batch, to - pos);
      const prepared: Prepared[] = [];
      let first = 0;
      for (let i = 0; i < n; i++) {
        const c = runsOf(order[pos + i]);
        putPieces(c, pieces, first);
        const d = i * 32;
        descs.writeBigUInt64LE(c.src, d);
        putU64(descs, d + 8, c.entry.storedLength);
        putU64(descs, d + 16, first);
        putU64(descs, d + 24, c.runs.length);
        first += c.runs.length;
        prepared.push(c);
      }
      populator.ready(pos + n - 1);
      const call = new Promise<number>((resolve, reject) => nativeMany.async(pid, descs, n, pieces, done, (err, ret) => (err ? reject(err) : resolve(Number(ret)))));
      state.running?.add(call);
      let ran: number;
      try {
        ran = await call;
      } finally {
        state.running?.delete(call);
      }
      for (let i = 0; i < ran; i++) finish(prepared[i], Number(done.readBigInt64LE(i * 16)), Number(done.readBigInt64LE(i * 16 + 8)));
    }
  };
  state.running = new Set();
  const per = Math.ceil(order.length / lanes);
  const all = Array.from({ length: lanes }, (_, l) => lane(l * per, Math.min(order.length, (l + 1) * per)).catch((err) => { failure ??= err; }));
  await Promise.all(all);
  if (failure) throw failure;
  return pages;
}

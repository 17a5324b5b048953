/**
 * Writing the image's pages into the new task. Chunk by chunk: decode (and
 * CRC-check) one chunk, then one process_vm_writev puts every run of that
 * chunk in place. Pages no run covers stay unpopulated, as they were.
 */
import { VmCopier, GatherWriter, type RemoteRange } from '../sys/index.js';
import { planByAddress, type AddressPlan } from './fill-plan.js';
import { PageFileReader } from '../image/page-file.js';
import { resolveTables, resolvedRuns, asResolvedTable, type ResolvedRun, type ResolvedTable } from '../image/chain-index.js';
import { runTableOf } from '../image/run-table.js';
import type { Range } from '../image/ranges.js';
import type { Image } from '../image/image-reader.js';
import { TsnapError } from '../errors.js';
import type { RemoteSyscaller } from '../inject/remote-syscall.js';
import { PAGE_SIZE } from '../sys/uapi.js';
import { Populator, populateByChunk, populateByAddress } from './populator.js';
import { mapFillFor, fillMapped } from './map-fill.js';
import { nativeCrcWritevMany, nativeCrcGather, type CrcWritevMany, type CrcGather, type CrcCombineMany } from '../sys/map-fill.js';
import { errnoName } from '../sys/errors.js';
import { mark } from '../trace.js';

const EFAULT = 14;

export interface FillResult {
  pages: number;
  bytes: number;
}

/** Chunks read and decoded ahead of the one being written. */
const READ_AHEAD = 6;
/**
 * Up to this many chunks are read on tsnap's own thread instead: what a
 * lazy restore writes at once (the stack, file mappings' data: a chunk or
 * two) waited for the pool's read and the event loop's turn per chunk,
 * 1-30 ms each on a loaded machine, besides READ_AHEAD fresh buffers.
 */
const SYNC_CHUNKS = 2;

/**
 * TSNAP_FILL_SYNC=1: chunks stored uncompressed are read on tsnap's own
 * thread too, however many, instead of on the pool ahead. Read and
 * CRC-checked in one native call (tsnap_pread_crc32) into one reused
 * buffer, a chunk is still in this CPU's cache when process_vm_writev
 * copies it out, and no pool wakeup, promise or event-loop turn is paid
 * per chunk: 7-16% less CPU for a 1 GiB restore. Not the default: on a
 * loaded machine its one thread gets a smaller share of the cores than
 * the writer and the pool's reader together, and the wall time was up to
 * 1.46 x main's (docs/performance.md, "Restore, 1 GiB").
 */
function syncFill(chunks: readonly { codec: string }[]): boolean {
  return process.env.TSNAP_FILL_SYNC === '1' && chunks.every((c) => c.codec === 'none');
}

/** Fills smaller than this read into buffers (a lazy restore's first pages, a small process). */
const MAP_FILL_MIN = 16 << 20;

/** Chunks read on tsnap's thread between two turns of the event loop. */
const YIELD_EVERY = 64;

/**
 * A chain is written by address when the chunks its windows hold at once
 * stay below this (MiB of buffers at the default chunk size); otherwise
 * (levels whose chunks each scatter over the whole address space, as a
 * copy-on-write dump's can) chunk by chunk, each chunk read once.
 */
const MAX_LIVE = 16;
/** Data per window of the address order: the size of one image's chunk, so windows and calls match one image's. */
const WINDOW_BYTES = 1 << 20;

/** What a failed fill must wait for or stop: reads in flight, the populates running. */
interface FillState {
  /** Reads started and not yet taken (a taken one holds its chunk's data: let it go). */
  pending: Set<Promise<unknown>>;
  populator: Populator | null;
  /** The one-copy fill's calls on the pool (map-fill.ts). */
  running?: Set<Promise<unknown>>;
}

/** `resolved`: the chain already resolved over exactly `within` (checkUnreadChunks did it), not computed again. */
export async function fillPages(pid: number, chain: readonly Image[], within: Range[], sc: RemoteSyscaller | null = null, onProgress?: (done: number, total: number) => void, resolvedAlready?: ResolvedTable | readonly ResolvedRun[]): Promise<FillResult> {
  const readers: (PageFileReader | null)[] = chain.map(() => null);
  const readerOf = (image: number) => (readers[image] ??= new PageFileReader(chain[image].dir, chain[image].pagemap.chunks));
  const state: FillState = { pending: new Set(), populator: null };
  let pages: number;
  try {
    // Each page from the newest image that has it; resolved runs are sorted
    // by address, and so are the runs of one chunk.
    const resolved = resolvedAlready ? asResolvedTable(resolvedAlready) : resolveTables(chain.map((c) => ({ kind: c.inventory.kind, table: runTableOf(c.pagemap) })), within);
    // As large as the largest stored chunk, not what an inventory claims.
    let largest = PAGE_SIZE;
    for (const c of chain) for (const ch of c.pagemap.chunks) largest = Math.max(largest, ch.storedLength);
    // TSNAP_FILL_BY_CHUNK=1: a chain in chunk order, as before (bench A/B in one build, tests of that path).
    const byAddress = chain.length > 1 && process.env.TSNAP_FILL_BY_CHUNK !== '1';
    const fused = byAddress && resolved.length > 0 && process.env.TSNAP_FILL_CHAIN_FUSED !== '0' && mappedGather(chain, bytesOf(resolved)) ? nativeCrcGather() : null;
    if (fused) {
      pages = await fillFused(pid, chain, resolved, readerOf, fused, state, onProgress);
    } else {
      const plan = byAddress ? planByAddress(resolved, WINDOW_BYTES, chain.map((c) => c.pagemap.chunks.length)) : null;
      const mappedMany = plan && resolved.length > 0 ? mappedGather(chain, plan.bytes) : null;
      pages = plan && mappedMany
        ? await fillByAddressMapped(pid, resolved, plan, readerOf, mappedMany, sc, state, onProgress)
        : plan && plan.maxLive <= MAX_LIVE
        ? await fillByAddress(pid, resolved, plan, readerOf, largest, sc, state, onProgress)
        : await fillByChunk(pid, chain, resolvedRuns(resolved), readerOf, largest, sc, state, onProgress, syncFill(chain.flatMap((c) => c.pagemap.chunks)));
    }
    state.populator?.drain();
  } catch (err) {
    try { state.populator?.drain(); } catch { /* the task is killed anyway */ }
    // Let reads and writes in flight finish before their file descriptor and mappings go.
    await Promise.allSettled(state.pending);
    if (state.running) await Promise.allSettled(state.running);
    throw err;
  } finally {
    for (const r of readers) r?.close();
  }
  return { pages, bytes: pages * PAGE_SIZE };
}

/**
 * A chain, by address: window after window of the target's memory, each
 * written in one call gathered from the chunks of every level it needs
 * (GatherWriter), so that pages of different levels side by side in the
 * target are one remote range, as they are in one image. A chunk is read
 * (ahead, in the order first needed) once and kept until its last window.
 */
async function fillByAddress(pid: number, resolved: ResolvedTable, plan: AddressPlan, readerOf: (image: number) => PageFileReader, largest: number, sc: RemoteSyscaller | null, state: FillState, onProgress?: (done: number, total: number) => void): Promise<number> {
  const gather = new GatherWriter(pid);
  const total = plan.bytes;
  const populator = (state.populator = new Populator(sc, sc ? populateByAddress(resolved, plan.windowOf) : []));
  populator.begin();
  const nChunks = plan.keys.length;
  const reads: (Promise<Buffer> | null)[] = new Array(nChunks).fill(null);
  const data: (Buffer | null)[] = new Array(nChunks).fill(null);
  const addrOf = new Float64Array(nChunks);
  const bufOf: (Buffer | null)[] = new Array(nChunks).fill(null);
  // Chunks in the order their last window ends: let go after it.
  const byLast = Array.from({ length: nChunks }, (_, c) => c).sort((a, b) => plan.lastWindow[a] - plan.lastWindow[b]);
  let freed = 0;
  // Reused read buffers, at most what is held at once plus the read-ahead.
  const cap = plan.maxLive + READ_AHEAD;
  const free: Buffer[] = [];
  let allocated = 0;
  let next = 0;
  const refill = () => {
    while (next < nChunks) {
      let buf = free.pop();
      if (!buf) {
        if (allocated >= cap) return;
        allocated++;
        buf = Buffer.allocUnsafeSlow(largest);
      }
      const c = next++;
      const key = plan.keys[c];
      bufOf[c] = buf;
      const read = readerOf(Math.floor(key / 0x100000000)).readChunkAsync(key % 0x100000000, buf);
      // Reported when its turn comes (or by the cleanup), never unhandled.
      read.catch(() => {});
      reads[c] = read;
      state.pending.add(read);
    }
  };
  refill();
  let pages = 0;
  const rStart = resolved.start, rPages = resolved.pages, rOffset = resolved.offset;
  for (let w = 0; w < plan.windows; w++) {
    populator.ready(w);
    const from = plan.windowStart[w];
    const to = plan.windowStart[w + 1];
    for (let i = from; i < to; i++) {
      const c = plan.chunkOf[i];
      if (data[c] === null) {
        // Its read was started before this window (refill): wait for it, once.
        const read = reads[c]!;
        const got = await read;
        state.pending.delete(read);
        data[c] = got;
        addrOf[c] = GatherWriter.addressOf(got);
        reads[c] = null;
      }
      gather.add(addrOf[c] + rOffset[i], rStart[i], rPages[i] * PAGE_SIZE);
      pages += rPages[i];
    }
    const failed = gather.finish();
    if (failed !== null) throw new TsnapError('restoreFailed', `process_vm_writev failed at 0x${failed.toString(16)}`);
    while (freed < nChunks && plan.lastWindow[byLast[freed]] <= w) {
      const c = byLast[freed++];
      data[c] = null;
      free.push(bufOf[c]!);
      bufOf[c] = null;
    }
    onProgress?.(pages * PAGE_SIZE, total);
    refill();
  }
  return pages;
}

/**
 * The native CRC of mapped chunks (tsnap_crc_writev_many with no pieces),
 * when a chain written by address can take its pages from read-only
 * mappings of the pages files: every chunk uncompressed, the fill large
 * enough to pay for the library (as the one-image fill, map-fill.ts), and
 * TSNAP_FILL_CHAIN_MAP not 0 (A/B in one build; 1: whatever the size, for
 * tests of this path on small chains).
 */
function mappedGather(chain: readonly Image[], bytes: number): CrcWritevMany | null {
  const knob = process.env.TSNAP_FILL_CHAIN_MAP;
  if (knob === '0' || (bytes < MAP_FILL_MIN && knob !== '1') || !mapFillFor(chain)) return null;
  return nativeCrcWritevMany();
}

/** Chunks whose CRC one call on the pool takes, and calls in flight ahead of the writer. */
const CRC_BATCH = 8;
const CRC_AHEAD = 3;

/**
 * A chain by address, as fillByAddress, with one copy: each window's
 * pieces are gathered straight from read-only mappings of the levels'
 * pages files, so process_vm_writev copies from the page cache into the
 * task, where fillByAddress first pread every chunk into a buffer (a
 * second copy of all the chain stores: 1.4 GiB for the bench's 1 GiB
 * chain). Each chunk's CRC is taken whole on the pool (batches of
 * CRC_BATCH, SIGBUS-guarded in tsnap-mapfill.c) ahead of the windows, and
 * compared before any window writes from it: a damaged chunk is refused
 * before a byte of it reaches the task. No buffers are held, so the
 * chunks live at once (MAX_LIVE) do not matter here. Kept for
 * TSNAP_FILL_CHAIN_FUSED=0 (A/B against fillFused in one build) and a
 * library without tsnap_crc_gather.
 */
async function fillByAddressMapped(pid: number, resolved: ResolvedTable, plan: AddressPlan, readerOf: (image: number) => PageFileReader, many: CrcWritevMany, sc: RemoteSyscaller | null, state: FillState, onProgress?: (done: number, total: number) => void): Promise<number> {
  const gather = new GatherWriter(pid);
  const total = plan.bytes;
  // As for one image from mappings (map-fill.ts): the task populating ahead cost more CPU than the
  // writes' own faults (the bench's 64 MiB chain: the task's ~19 ms against ~2 ms more of tsnap's,
  // docs/performance.md, "Chains from mappings, fused"). TSNAP_FILL_CHAIN_POPULATE=1: as before (A/B).
  const populates = process.env.TSNAP_FILL_CHAIN_POPULATE === '1' ? sc : null;
  const populator = (state.populator = new Populator(populates, populates ? populateByAddress(resolved, plan.windowOf) : []));
  populator.begin();
  const nChunks = plan.keys.length;
  const nBatches = Math.ceil(nChunks / CRC_BATCH);
  const addrOf = new Float64Array(nChunks);
  /** Per batch of plan.keys: its CRC call, which resolves once every chunk of it is checked. */
  const batches: (Promise<void> | null)[] = new Array(nBatches).fill(null);
  const checked = new Uint8Array(nBatches);
  const running = (state.running ??= new Set());
  const startBatch = (b: number) => {
    const from = b * CRC_BATCH;
    const n = Math.min(CRC_BATCH, nChunks - from);
    const descs = Buffer.allocUnsafeSlow(n * 32);
    const done = Buffer.allocUnsafeSlow(n * 16);
    const what: { reader: PageFileReader; chunk: number }[] = [];
    for (let i = 0; i < n; i++) {
      const key = plan.keys[from + i];
      const reader = readerOf(Math.floor(key / 0x100000000));
      const chunk = key % 0x100000000;
      const src = reader.mappedChunk(chunk);
      addrOf[from + i] = Number(src);
      descs.writeBigUInt64LE(src, i * 32);
      descs.writeBigUInt64LE(BigInt(reader.entry(chunk).storedLength), i * 32 + 8);
      descs.writeBigUInt64LE(0n, i * 32 + 16);
      descs.writeBigUInt64LE(0n, i * 32 + 24);
      what.push({ reader, chunk });
    }
    // `pieces` is never read with no pieces per chunk; one byte keeps the pointer valid.
    const call = new Promise<number>((resolve, reject) => many.async(pid, descs, n, Buffer.alloc(8), done, (err, ret) => (err ? reject(err) : resolve(Number(ret)))));
    running.add(call);
    const p = call.then((ran) => {
      running.delete(call);
      for (let i = 0; i < ran; i++) {
        // The call stops after a failed chunk (its result negative), so every chunk before `ran` has one.
        const got = Number(done.readBigInt64LE(i * 16));
        if (got < 0 && got !== -EFAULT) throw new TsnapError('restoreFailed', `the CRC of chunk ${what[i].chunk} of ${what[i].reader.dir}: ${errnoName(-got)}`);
        what[i].reader.checkMapped(what[i].chunk, got === -EFAULT, Number(done.readBigInt64LE(i * 16 + 8)));
      }
    }, (err) => {
      running.delete(call);
      throw err;
    });
    p.catch(() => {});
    state.pending.add(p);
    batches[b] = p;
  };
  let nextBatch = 0;
  const ahead = (upTo: number) => {
    while (nextBatch < nBatches && nextBatch <= upTo) startBatch(nextBatch++);
  };
  ahead(CRC_AHEAD - 1);
  let pages = 0;
  const rStart = resolved.start, rPages = resolved.pages, rOffset = resolved.offset;
  for (let w = 0; w < plan.windows; w++) {
    populator.ready(w);
    const from = plan.windowStart[w];
    const to = plan.windowStart[w + 1];
    for (let i = from; i < to; i++) {
      const c = plan.chunkOf[i];
      const b = (c / CRC_BATCH) | 0;
      if (!checked[b]) {
        // Chunks are numbered in the order the windows first need them: batch b and all before it are due.
        ahead(b + CRC_AHEAD - 1);
        const p = batches[b]!;
        await p;
        state.pending.delete(p);
        checked[b] = 1;
      }
      gather.add(addrOf[c] + rOffset[i], rStart[i], rPages[i] * PAGE_SIZE);
      pages += rPages[i];
    }
    const failed = gather.finish();
    if (failed !== null) throw new TsnapError('restoreFailed', `process_vm_writev failed at 0x${failed.toString(16)}`);
    onProgress?.(pages * PAGE_SIZE, total);
  }
  return pages;
}

/** Bytes the resolved runs write. */
function bytesOf(resolved: ResolvedTable): number {
  let pages = 0;
  for (let i = 0; i < resolved.length; i++) pages += resolved.pages[i];
  return pages * PAGE_SIZE;
}

/** Lanes on libuv's pool (as one image from mappings, map-fill.ts), and target bytes per call. */
const FUSED_LANES = 2;
const FUSED_CALL_BYTES = 8 << 20;

/**
 * A chain by address from mappings with the CRC taken as the bytes pass
 * (tsnap_crc_gather): the resolved runs of every level in address order,
 * in groups of 256 KiB whose chunks' CRCs are advanced over them (and over
 * the bytes newer levels replaced before them) just before one
 * process_vm_writev copies them out of this CPU's cache. fillByAddressMapped
 * took every chunk's CRC ahead, so the write read the page cache a second
 * time, from memory (its _copy_from_iter 4.6x one image's in perf), on
 * tsnap's thread alone. The native call reads the resolved table's columns
 * as they are: no plan and no second list per run (157 711 runs for the
 * bench's 1 GiB chain). Two lanes, each about half of the target's bytes;
 * a chunk used by both is checked in two parts, the lower by the first lane
 * and the rest by the second, and the parts' CRCs combined. Every CRC is
 * compared once both lanes are done, before the task can run: as for one
 * image (map-fill.ts), bytes written before a mismatch is found harm only a
 * task that is then killed.
 */
async function fillFused(pid: number, chain: readonly Image[], resolved: ResolvedTable, readerOf: (image: number) => PageFileReader, native: { run: CrcGather; combine: CrcCombineMany }, state: FillState, onProgress?: (done: number, total: number) => void): Promise<number> {
  const n = resolved.length;
  const { start, pages, image, chunk, offset } = resolved;
  // Every chunk of the chain numbered: level l's chunk j is base[l] + j.
  const base = new Uint32Array(chain.length);
  let nChunks = 0;
  for (let l = 0; l < chain.length; l++) {
    base[l] = nChunks;
    nChunks += chain[l].pagemap.chunks.length;
  }
  const length = new Float64Array(nChunks);
  for (let l = 0; l < chain.length; l++) chain[l].pagemap.chunks.forEach((ch, j) => (length[base[l] + j] = ch.storedLength));
  const count = Uint32Array.from(chain, (c) => c.pagemap.chunks.length);
  const used = new Uint8Array(nChunks);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const l = image[i];
    const k = base[l] + chunk[i];
    const len = pages[i] * PAGE_SIZE;
    if (chunk[i] >= count[l] || offset[i] + len > length[k]) throw new TsnapError('badImage', `${chain[l].dir}/pagemap: a run at 0x${start[i].toString(16)} lies past the end of chunk ${chunk[i]}; the image is damaged`);
    used[k] = 1;
    total += len;
  }
  const chunks = Buffer.alloc(Math.max(1, nChunks) * 8);
  for (let l = 0; l < chain.length; l++) {
    const reader = readerOf(l);
    for (let j = 0; j < chain[l].pagemap.chunks.length; j++) if (used[base[l] + j]) chunks.writeBigUInt64LE(reader.mappedChunk(j), (base[l] + j) * 8);
  }
  // The lanes: runs [0, mid) and [mid, n), about half the bytes each.
  let mid = n;
  if (FUSED_LANES > 1 && n > 1) {
    let bytes = 0;
    for (mid = 0; mid < n - 1 && bytes < total / 2; mid++) bytes += pages[mid] * PAGE_SIZE;
  }
  // Where each chunk's second part starts: at its first run in the second lane (its end: none).
  const split = Float64Array.from(length);
  for (let i = n - 1; i >= mid; i--) split[base[image[i]] + chunk[i]] = offset[i];
  const lanes = mid < n ? [[0, mid], [mid, n]] : [[0, n]];
  // u64 triples as u32 halves (a stored chunk is at most 128 MiB, image-shapes.ts): Buffer's writer per field was ~10 ms of a cold 1 GiB chain.
  const segs = lanes.map((_, lane) => {
    const seg = Buffer.alloc(Math.max(1, nChunks) * 24);
    const u32 = new Uint32Array(seg.buffer, seg.byteOffset, nChunks * 6);
    for (let k = 0; k < nChunks; k++) {
      if (!used[k]) continue; // [0, 0): checked by checkUnreadChunks, not here
      const lo = lane === 0 ? 0 : split[k];
      u32[k * 6] = lo;
      u32[k * 6 + 2] = lane === 0 ? split[k] : length[k];
      u32[k * 6 + 4] = lo;
    }
    return { seg, crcs: Buffer.alloc(Math.max(1, nChunks) * 4) };
  });
  mark('fill: lanes planned');
  const running = (state.running ??= new Set());
  let failure: unknown = null;
  let written = 0;
  const lane = async (l: number) => {
    const [from, to] = lanes[l];
    const { seg, crcs } = segs[l];
    const out = Buffer.alloc(16);
    for (let at = from; !failure; ) {
      let end = at;
      for (let bytes = 0; end < to && bytes < FUSED_CALL_BYTES; end++) bytes += pages[end] * PAGE_SIZE;
      const before = Number(out.readBigUInt64LE(0));
      const call = new Promise<number>((resolve, reject) => native.run.async(pid, chunks, seg, crcs, nChunks, base, start, pages, image, chunk, offset, PAGE_SIZE, at, end, end === to ? 1 : 0, out, (err, ret) => (err ? reject(err) : resolve(Number(ret)))));
      running.add(call);
      let r: number;
      try {
        r = await call;
      } finally {
        running.delete(call);
      }
      const done = Number(out.readBigUInt64LE(0));
      if (r === -EFAULT) {
        const k = Number(out.readBigUInt64LE(8));
        let lv = chain.length - 1;
        while (base[lv] > k) lv--;
        readerOf(lv).checkMapped(k - base[lv], true, 0);
      }
      if (r < 0) throw new TsnapError('restoreFailed', `process_vm_writev(${pid}): ${errnoName(-r)}`);
      if (r === 1) {
        // The run holding the first byte not written.
        let sum = 0;
        let i = from;
        while (i < to - 1 && (sum += pages[i] * PAGE_SIZE) <= done) i++;
        throw new TsnapError('restoreFailed', `process_vm_writev failed at 0x${start[i].toString(16)}`);
      }
      written += done - before;
      onProgress?.(written, total);
      if (end === to) return;
      at = end;
    }
  };
  await Promise.all(lanes.map((_, l) => lane(l).catch((err) => { failure ??= err; })));
  if (failure) throw failure;
  mark('fill: written');
  // Each chunk's CRC: its first part's, or both parts' combined.
  let crcs = segs[0].crcs;
  if (segs.length > 1) {
    const blen = Buffer.alloc(Math.max(1, nChunks) * 8);
    const u32 = new Uint32Array(blen.buffer, blen.byteOffset, nChunks * 2);
    for (let k = 0; k < nChunks; k++) if (used[k]) u32[k * 2] = length[k] - split[k];
    crcs = Buffer.allocUnsafeSlow(Math.max(1, nChunks) * 4);
    native.combine(segs[0].crcs, segs[1].crcs, blen, nChunks, crcs);
  }
  for (let l = 0; l < chain.length; l++) {
    const reader = readerOf(l);
    for (let j = 0; j < chain[l].pagemap.chunks.length; j++) if (used[base[l] + j]) reader.checkMapped(j, false, crcs.readUInt32LE((base[l] + j) * 4));
  }
  return written / PAGE_SIZE;
}

/** One image (or a chain whose chunks scatter): chunk by chunk, each written in one call. */
async function fillByChunk(pid: number, chain: readonly Image[], resolved: readonly ResolvedRun[], readerOf: (image: number) => PageFileReader, largest: number, sc: RemoteSyscaller | null, state: FillState, onProgress?: (done: number, total: number) => void, readOnThread = false): Promise<number> {
  const copier = new VmCopier(pid);
  let pages = 0;
  const byChunk = new Map<number, ResolvedRun[]>();
  for (const r of resolved) {
    // A number, not a string: ~10 000 runs per restore of a chain or of 10 000 VMAs.
    const key = r.image * 0x100000000 + r.chunk;
    let list = byChunk.get(key);
    if (!list) byChunk.set(key, (list = []));
    list.push(r);
  }
  const total = resolved.reduce((n, r) => n + r.pages * PAGE_SIZE, 0);
  // Uncompressed and large enough to pay for the library's load: one copy, from a mapping (map-fill.ts).
  const mapped = total >= MAP_FILL_MIN && !readOnThread ? mapFillFor(chain) : null;
  if (mapped) return fillMapped(pid, mapped, byChunk, readerOf, sc, state, onProgress);
  const order = [...byChunk.keys()];
  const runsInOrder = order.flatMap((c, pos) => byChunk.get(c)!.map((run) => ({ run, pos })));
  const populator = (state.populator = new Populator(sc, sc ? populateByChunk(runsInOrder) : []));
  populator.begin();
  const pending: Promise<Buffer>[] = [];
  let next = 0;
  // Reused read buffers: fresh 1 MiB allocations would be mmap'ed and
  // page-faulted anew for every chunk.
  const sync = order.length <= SYNC_CHUNKS || readOnThread;
  // One reused buffer: a fresh one per chunk would be page-faulted anew.
  const syncBuf = sync && order.length > SYNC_CHUNKS ? Buffer.allocUnsafeSlow(largest) : undefined;
  const pool: Buffer[] = sync ? [] : Array.from({ length: READ_AHEAD }, () => Buffer.allocUnsafeSlow(largest));
  const buffers: Buffer[] = [];
  const refill = () => {
    while (pool.length > 0 && next < order.length) {
      const buf = pool.pop()!;
      buffers.push(buf);
      const first = byChunk.get(order[next++])![0];
      const read = readerOf(first.image).readChunkAsync(first.chunk, buf);
      // A read ahead may fail while an earlier chunk is being written: it
      // is reported when its turn comes (or by the cleanup), never as an
      // unhandled rejection that would end tsnap with a stack trace.
      read.catch(() => {});
      pending.push(read);
      state.pending.add(read);
    }
  };
  refill();
  for (let pos = 0; pos < order.length; pos++) {
    const runs = byChunk.get(order[pos])!;
    populator.ready(pos);
    let data: Buffer;
    if (sync) {
      // Others' callbacks (a library user's, a server's) get the event loop now and then.
      if (syncBuf && pos % YIELD_EVERY === YIELD_EVERY - 1) await new Promise<void>((resolve) => setImmediate(resolve));
      data = readerOf(runs[0].image).readChunk(runs[0].chunk, syncBuf);
    } else {
      const read = pending.shift()!;
      data = await read;
      state.pending.delete(read);
    }
    const readBuf = sync ? null : buffers.shift()!;
    // Runs fill their chunk in order, so one local range feeds them all
    // when they are back to back; otherwise write run by run.
    let contiguous = true;
    for (let i = 1; i < runs.length; i++) {
      if (runs[i].offset !== runs[i - 1].offset + runs[i - 1].pages * PAGE_SIZE) contiguous = false;
    }
    if (contiguous) {
      const ranges: RemoteRange[] = runs.map((r) => ({ addr: r.start, len: r.pages * PAGE_SIZE }));
      const want = ranges.reduce((s, r) => s + r.len, 0);
      const got = copier.writev(data, runs[0].offset, ranges);
      if (got !== want) throw new TsnapError('restoreFailed', `process_vm_writev wrote ${got} of ${want} bytes at 0x${runs[0].start.toString(16)}`);
    } else {
      // Runs a newer image of the chain cut into: still one call for the chunk.
      const pieces = runs.map((r) => ({ offset: r.offset, addr: r.start, len: r.pages * PAGE_SIZE }));
      const want = pieces.reduce((s, r) => s + r.len, 0);
      const got = copier.writePieces(data, pieces);
      if (got !== want) {
        let at = 0;
        const failed = pieces.find((p) => (at += p.len) > got) ?? pieces[0];
        throw new TsnapError('restoreFailed', `process_vm_writev failed at 0x${failed.addr.toString(16)}`);
      }
    }
    for (const r of runs) pages += r.pages;
    onProgress?.(pages * PAGE_SIZE, total);
    if (readBuf) pool.push(readBuf);
    refill();
  }
  return pages;
}

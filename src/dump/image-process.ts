/**
 * The one step every dump is made of: the image of ONE process, in its own
 * directory. It neither freezes, finishes nor handles signals: the session
 * over one process or a tree (src/dump/session.ts) does, and undoes what
 * the step registered with it should the session fail anywhere.
 *
 * In two halves around the freeze. prepareImage, before it: the page
 * writer, what the parent chain already holds, and the tracking (found, or
 * injected, stopping the target briefly), so that the freeze lasts only for
 * the last delta. takeProcessImage, frozen (or running, for a pre-dump): the
 * state, the scan, the copy, and the image files up to its inventory. Its
 * tracking round is handed back (result.round) for the session to commit
 * with the rest of the image.
 */
import type { VmFlagsWatch } from '../proc/vmflags-watch.js';
import type { EarlyScan } from './early-scan.js';
import { readMaps, readStat } from '../proc/index.js';
import type { Prearmed } from './cow-prearm.js';
import { mark } from '../trace.js';
import { release as kernelRelease } from 'node:os';
import { relative, resolve } from 'node:path';
import { closeSync, readFileSync } from 'node:fs';
import { ProcMem, Pagemap, randomUuid } from '../sys/index.js';
import { FrozenProcess } from '../freeze/frozen-process.js';
import type { FrozenSet } from '../freeze/frozen-set.js';
import { pausePoint } from '../fault-points.js';
import { commitHolder } from '../track/holder.js';
import { RoundRecord } from '../track/round-record.js';
import { collectRemoteState } from '../state/task-state.save.js';
import type { Scratch } from '../inject/remote-syscall.js';
import { unmergeScratch } from './scratch-flags.js';
import { readLayout, assembleProcess } from './process-state.js';
import { recordGuards } from './guards.js';
import { copyPages, fullSelection, type CopyOptions } from './page-dumper.js';
import { copySpliced } from './splice-copy.js';
import { selectDelta } from './delta-selection.js';
import { normalize, subtract, type Range } from '../image/ranges.js';
import { openTracking, stopHolder, type Tracking } from '../track/tracking.js';
import { signalHolder, holderEndingWithTheSet } from '../track/holder.js';
import { uffdWriteProtect } from '../track/uffd.js';
import { PageFileWriter, DEFAULT_CHUNK_SIZE } from '../image/page-file.js';
import type { PageSink } from './page-sink.js';
import { writeMetaFile } from '../image/metadata.js';
import { encodePagemap, validateRuns } from '../image/page-runs.js';
import { prepareImageDir, discardImageDir, fsyncDir, type PreparedDir } from '../image/image-dir.js';
import { readChain, type Image } from '../image/image-reader.js';
import { chainStoredRanges, type ChainLevel } from '../image/chain-index.js';
import { runTableOf } from '../image/run-table.js';
import type { ChainCache } from '../image/chain-cache.js';
import { TsnapError, asTsnapError } from '../errors.js';
import { checkTarget } from './target-check.js';
import { refuseIfEnded, refuseOtherProcess, endedSinceFirstRound } from './target-identity.js';
import { FileKind, FORMAT_VERSION, FORMAT_VERSION_SPLIT, PAGES_FILES, PageWhere, type Compression, type DumpStats, type FdImage, type Inventory, type PageRun } from '../../formats/schema.js';
import { TOOL_VERSION } from '../version.js';
import { CowWorker, copyWithCow, type CowCopyResult } from './cow-session.js';
import { FrozenClock } from './frozen-clock.js';
import { SmapsReader } from '../proc/smaps-reader.js';
import { PAGE_SIZE } from '../sys/uapi.js';
import type { SessionScope } from './session.js';
import type { DumpOptions, DumpResult, RoundEnd } from './dump.js';

export type Mode = 'dump' | 'predump';

/** What a process's image has ready before the freeze. */
export interface PreparedImage {
  pid: number;
  mode: Mode;
  opts: DumpOptions;
  t0: bigint;
  imageId: string;
  dir: PreparedDir;
  parent: Image[] | null;
  chainStored: Range[] | null;
  /** With `leaveOut`: the pages the parent chain's newest two rounds wrote (newest first). */
  recent: Range[][];
  writer: PageSink;
  track: Tracking | null;
  record: RoundRecord | null;
  round: RoundEnd | null;
  /** The ranges this round write-protected (an abort lifts them again). */
  armed: Range[];
  compression: Compression;
  fsync: boolean;
  /** The process's start time, recorded in the inventory (its identity with the pid). */
  startTime: number;
}

/** The process as the session holds it while its image is taken. */
export interface FrozenInput {
  /** Null for a pre-dump: the process runs. */
  process: FrozenProcess | null;
  /** Its fds, when the session read them across a tree; otherwise read here. */
  fds?: FdImage[];
  /** Reads smaps alongside the remote syscalls (the session started it before the freeze). */
  smaps?: SmapsReader | null;
  /** VmFlags read before the freeze, and the watch that says whether they still hold (proc/vmflags-watch.ts). */
  /** `scan`: the present pages and guards read under the same watch (early-scan.ts). */
  earlyFlags?: { flags: Map<number, string[]>; watch: VmFlagsWatch; scan?: EarlyScan | null } | null;
  /** Copy-on-write: the worker, how the session lets its process run during the copy, and the protection made before the freeze. */
  cow?: { worker: CowWorker; release: () => void; prearmed?: Prearmed | null } | null;
  /**
   * Lets the process run once every byte is read, before the writes are
   * done (a process the session leaves running need not wait for them).
   */
  releaseEarly?: (() => void) | null;
}

export interface ImageOutcome {
  result: DumpResult;
  cow: CowCopyResult | null;
}


export async function prepareImage(session: SessionScope, opts: DumpOptions, mode: Mode, checkAbort: () => void, leader: FrozenProcess['leader'] | null): Promise<PreparedImage> {
  const t0 = process.hrtime.bigint();
  const { pid } = opts;
  const ended = targetCheck(opts);
  // The loop's process must still hold its pid before the parent's identity is compared with it.
  ended();
  const startTime = readStat(pid).startTime;
  const compression = opts.compression ?? 'none';
  const fsync = opts.fsync ?? !opts.leaveRunning;
  const parent = opts.parent ? readParent(opts.parent, pid, opts.chainCache) : null;
  mark('prepare: parent read');
  const dir = prepareImageDir(opts.dir);
  session.onFailure(() => discardImageDir(dir));
  // Known before the scan: the tracking's record names the round's image.
  const imageId = randomUuid();
  // Buffers are allocated and touched before any freeze, not during it.
  const writer = opts.pageSink ? await opts.pageSink(compression, opts.chunkSize ?? DEFAULT_CHUNK_SIZE) : await PageFileWriter.create(dir.path, compression, opts.chunkSize ?? DEFAULT_CHUNK_SIZE);
  session.onFailure(() => writer.abort());
  mark('prepare: page sink ready');
  // What the chain already holds depends on the images only: work it out
  // before the target is stopped.
  const chainStored = parent ? (opts.chainCache ? opts.chainCache.storedRanges(parent) : chainStoredRanges(parent.map(level))) : null;
  mark('prepare: chain resolved');
  // For leaveOut, read while the target runs: deltas only (a full image's pages are everything).
  const recent = opts.leaveOut && parent ? parent.slice(0, 2).filter((img) => img.inventory.kind === 'delta').map((img) => normalize(img.pagemap.runs.filter((r) => r.where === PageWhere.Here).map((r) => ({ start: r.start, end: r.start + r.pages * PAGE_SIZE })))) : [];
  const prep: PreparedImage = { pid, mode, opts, t0, imageId, dir, parent, chainStored, recent, writer, track: null, record: null, round: null, armed: [], compression, fsync, startTime };
  // Tracking is found (or injected, stopping the target briefly) before
  // the dump's own freeze, which then lasts only for the last delta.
  if (mode === 'predump' || parent) {
    const track = await openTracking(pid, parent?.[0].inventory.tracking ?? null, leader, ended);
    mark('prepare: tracking open');
    prep.track = track;
    for (const e of track.ended) opts.warn?.(`process ${pid} was already tracked (${e}); that tracking is ended: two chains on one process would clear each other's written pages`);
    if (track.fresh) pausePoint('holder-started');
    const record = RoundRecord.open(track, parent ? { dir: parent[0].dir, imageId: parent[0].inventory.imageId } : null, opts.parent ?? null, { imageId, dir: dir.path, ...(opts.commitFile ? { commitFile: opts.commitFile } : {}) });
    prep.record = record;
    const round = roundEnd(track, record, () => prep.armed, mode, !!(opts.leaveOut && opts.hold));
    prep.round = round;
    session.onFailure(() => round.abort());
    if (record.distrust) track.lost = record.distrust;
    if (track.lost) opts.warn?.(`tracking of process ${pid} was lost (${track.lost}); copying all of its memory again`);
  }
  checkAbort();
  return prep;
}

export async function takeProcessImage(session: SessionScope, prep: PreparedImage, input: FrozenInput, checkAbort: () => void): Promise<ImageOutcome> {
  const { pid, opts, mode, t0, imageId, dir, parent, chainStored, track, compression, fsync } = prep;
  const pageWriter = prep.writer;
  const frozen = input.process;
  let smapsReader = input.smaps ?? null;
  /** Set once a copy-on-write final round took VMAs from the parent's tracking. */
  let cowTracking: { uffd: number; dropped: boolean; ref: NonNullable<Tracking['ref']> } | null = null;
  // A tracking that lost VMAs to a copy-on-write round would miss their
  // writes: it ends, and the next round copies everything again.
  session.onFailure(() => { if (cowTracking?.dropped) stopHolder(cowTracking.ref); });
  const mem = new ProcMem(pid);
  const pagemap = new Pagemap(pid);
  try {
    const parts = new FrozenClock();
    // Read frozen, beside the remote syscalls rather than after them.
    const early = input.earlyFlags ?? null;
    const stale = early ? early.watch.check(early.flags, readMaps(pid).map((v) => v.start)) : 'not read';
    const dropped = early?.scan ? early.watch.checkDrops() : 'not read';
    // Its counters have answered: they go now, on the pool, while the frozen work goes on.
    early?.watch.close();
    mark(stale ? `dump: VmFlags read frozen (${stale})` : 'dump: VmFlags from before the freeze');
    if (early?.scan) mark(dropped ? `dump: present pages walked frozen (${dropped})` : 'dump: present pages and guards from before the freeze');
    const earlyScan = dropped ? null : early!.scan!;
    const vmFlags = !stale ? Promise.resolve(early!.flags) : smapsReader && frozen ? smapsReader.read(pid) : null;
    // With smaps being read beside it, the state step's scratch is
    // unmapped only after that read: a munmap (mmap_lock for writing)
    // would wait for the whole page-table walk.
    let scratch: Scratch | null = null;
    const remote = frozen ? collectRemoteState(frozen, mem, vmFlags && stale ? (s) => { scratch = s; } : undefined) : null;
    parts.lap('stateUs');
    mark('dump: state read');
    let flagsRead;
    try {
      flagsRead = (await vmFlags) ?? undefined;
    } finally {
      (scratch as Scratch | null)?.close();
    }
    if (flagsRead && scratch) unmergeScratch(flagsRead, scratch);
    const layout = readLayout(pid, opts.sharedElsewhere, flagsRead);
    recordGuards(pagemap, layout.images, earlyScan?.guards ?? null);
    parts.lap('layoutUs');
    mark('dump: layout read');
    const processImage = remote ? assembleProcess(pid, remote, layout, input.fds, { tcpEstablished: !!opts.tcpEstablished, tcpClose: opts.tcpClose, extUnixSk: !!opts.extUnixSk, ghostLimit: opts.ghostLimit, repair: session.repair }) : null;
    parts.lap('processUs');
    mark('dump: process assembled');
    checkAbort();

    const tMem = process.hrtime.bigint();
    const incremental = !!(parent && track && !track.lost);
    let zero: Range[] = [];
    let selection;
    let trackStats = { freshVmas: 0, untrackedVmas: 0, oldVmas: 0 };
    const rec = prep.record;
    if (track && rec) {
      pausePoint('before-scan');
      // The record (on disk) is written around a scan only when the scan
      // clears written bits: a migration's final round mostly clears none,
      // and its frozen window then holds no file write for it.
      let clearing = false;
      const delta = selectDelta(track.uffd, pagemap, layout.vmas, layout.classes, incremental ? chainStored : null, incremental ? rec.pending : [], mode === 'predump', () => { rec.beforeScan(); clearing = true; }, earlyScan);
      prep.armed = delta.armed;
      zero = delta.zero;
      selection = delta.here;
      trackStats = delta;
      pausePoint('scanned');
      if (clearing) rec.afterScan(prep.armed);
      pausePoint('after-scan');
    } else {
      selection = fullSelection(pagemap, layout.vmas, layout.classes);
    }
    parts.lap('scanUs');
    mark('dump: scanned');
    void smapsReader?.stop();
    smapsReader = null;
    let leftOut: Range[] = [];
    if (opts.leaveOut && opts.hold) {
      // A full copy's selection is a scan of the frozen target: taken whole here.
      if (!Array.isArray(selection)) selection = [...selection];
      const out = normalize(opts.leaveOut(layout.images, normalize(selection), processImage?.threads ?? [], prep.recent));
      leftOut = out;
      selection = subtract(selection, out);
      mark(`dump: ${out.length} ranges left out`);
    }
    let copied = 0;
    let vanished = 0;
    // A delta knows its pages; a full copy streams them: estimate with the
    // resident anonymous memory (statm: resident - file-backed resident).
    const total = Array.isArray(selection) ? selection.reduce((n, r) => n + (r.end - r.start), 0) : anonResidentBytes(pid);
    await opts.onLayout?.({ vmas: layout.images, zero, incremental });
    let cow: CowCopyResult | null = null;
    const copyOpts: CopyOptions = {
      onProgress: (bytes) => {
        copied += bytes;
        opts.onProgress?.({ bytes: copied, total, pid });
        checkAbort();
      },
      // A running target may unmap memory under us: make sure the range is
      // reported again next round (if it still exists) instead of lost.
      onVanished: frozen ? undefined : (start, len) => {
        vanished += len / PAGE_SIZE;
        try { uffdWriteProtect(track!.uffd, start, len, false); } catch { /* gone for good */ }
      },
    };
    const cowIn = input.cow ?? null;
    if (cowIn && track) cowTracking = { uffd: track.uffd, dropped: false, ref: track.ref };
    // Frozen and uncompressed: one copy through pipes in the target, when it can have them.
    const spliced = !cowIn ? await copySpliced({ pid, frozen, vmas: layout.vmas, selection, estimate: total, writer: pageWriter, mem, compression, onProgress: copyOpts.onProgress, onePagesFile: opts.onePagesFile }) : null;
    const pages = cowIn && frozen
      ? (cow = await copyWithCow({ pid, frozen, vmas: layout.vmas, classes: layout.classes, selection, writer: pageWriter, mem, worker: cowIn.worker, release: cowIn.release, onProgress: copyOpts.onProgress, tracking: cowTracking ?? undefined, prearmed: cowIn.prearmed ? { done: cowIn.prearmed, pagemap } : null })).pages
      : spliced?.pages ?? await copyPages(pid, layout.vmas, selection, pageWriter, mem, copyOpts);
    // Every byte is read: a target that stays alive need not wait for the writes.
    const frozenUs = cow ? cow.frozenUs : frozen ? frozen.frozenUs() : (track?.frozenUs ?? 0);
    input.releaseEarly?.();
    mark('dump: pages copied');
    await pageWriter.finish(fsync);
    mark('dump: pages finished');
    const memdumpUs = Number(process.hrtime.bigint() - tMem) / 1000;
    checkAbort();

    const runs: PageRun[] = [...pages.runs, ...zero.map((z) => ({ start: z.start, pages: (z.end - z.start) / PAGE_SIZE, where: PageWhere.Zero, chunk: 0, offset: 0 }))]
      .sort((a, b) => a.start - b.start);
    checkIndex(runs, pageWriter, dir.path);
    // A pre-dump froze nothing: its process could have exited at any point
    // of the round, and its pid been reused. Still there now, it was there
    // for every read by pid before; gone, the round is not committed.
    if (!frozen) targetCheck(opts)();
    mark('dump: index checked');
    const files: Inventory['files'] = {};
    // A final image's layout is its process file's mm.vmas: not stored twice (a restore decodes and checks every copy).
    // Page data in two files (the one-copy path's two threads) makes the image format 2: older readers refuse it whole.
    const split = pageWriter instanceof PageFileWriter && pageWriter.files === 2;
    const version = split ? FORMAT_VERSION_SPLIT : FORMAT_VERSION;
    files.pagemap = writeMetaFile(dir.path, FileKind.Pagemap, { ...encodePagemap({ chunks: pageWriter.chunks, runs }), ...(processImage ? {} : { vmas: layout.images }) }, fsync, version);
    mark('dump: pagemap written');
    if (processImage) files.process = writeMetaFile(dir.path, FileKind.Process, processImage, fsync);
    mark('dump: process written');
    const stats: DumpStats = {
      freezeUs: frozen?.freezeUs ?? 0,
      frozenUs,
      memdumpUs,
      totalUs: Number(process.hrtime.bigint() - t0) / 1000,
      vmas: layout.vmas.length,
      pagesScanned: layout.vmas.reduce((n, v, i) => n + (layout.classes[i] === 'notDumped' ? 0 : (v.end - v.start) / PAGE_SIZE), 0),
      pagesWritten: pages.pagesWritten,
      pagesZero: zero.reduce((n, z) => n + (z.end - z.start) / PAGE_SIZE, 0),
      pagesSlowPath: pages.pagesSlowPath,
      bytesRaw: pageWriter.bytesRaw,
      bytesStored: pageWriter.bytesStored,
      throughputMiBps: memdumpUs > 0 ? pageWriter.bytesRaw / (1 << 20) / (memdumpUs / 1e6) : 0,
      compression,
      ...(cow ? { cow: cow.stats } : {}),
      ...(frozen ? { frozenParts: parts.done() } : {}),
      ...(spliced ? { splice: spliced.stats } : {}),
      ...(track ? { vmasFresh: trackStats.freshVmas, vmasTracked: trackStats.oldVmas, vmasUntracked: trackStats.untrackedVmas, pagesVanished: vanished } : {}),
    };
    files.stats = writeMetaFile(dir.path, FileKind.Stats, stats, fsync);
    if (split) {
      files[PAGES_FILES[0]] = { length: pageWriter.storedIn(0), crc32: 0 };
      files[PAGES_FILES[1]] = { length: pageWriter.storedIn(1), crc32: 0 };
    } else {
      files.pages = { length: pageWriter.bytesStored, crc32: 0 };
    }
    const inventory: Inventory = {
      formatVersion: version,
      imageId,
      createdAt: new Date().toISOString(),
      tool: { name: 'tsnap', version: TOOL_VERSION },
      kind: incremental ? 'delta' : 'full',
      parent: parent ? { path: relative(dir.path, parent[0].dir) || '.', imageId: parent[0].inventory.imageId } : null,
      pid,
      arch: 'x86_64',
      kernel: kernelRelease(),
      pageSize: PAGE_SIZE,
      chunkSize: pageWriter.chunkSize,
      compression,
      files,
      contents: mode,
      tracking: mode === 'predump' ? track!.ref : null,
      startTime: prep.startTime,
    };
    // The inventory is the commit record: written last, then made durable.
    writeMetaFile(dir.path, FileKind.Inventory, inventory, fsync, version);
    if (fsync) fsyncDir(dir.path);
    mark('dump: inventory written');
    return {
      result: {
        dir: dir.path, imageId, kind: inventory.kind, stats,
        killed: false,
        trackingLost: track?.lost ?? null,
        held: null,
        round: prep.round,
        frozenAt: frozen?.frozenAt ?? null,
        ...(opts.leaveOut ? { leftOut } : {}),
      },
      cow,
    };
  } finally {
    pagemap.close();
    mem.close();
  }
}

/**
 * Both halves at once, for a process its session already holds: frozen
 * with the rest of a tree, or running (a pre-dump). Its tracking round
 * comes back in result.round, for the session to commit with the image.
 */
export async function imageProcess(scope: SessionScope, opts: DumpOptions, mode: Mode, checkAbort: () => void, input: FrozenInput): Promise<DumpResult> {
  try {
    targetCheck(opts)();
    checkTarget(opts.pid);
    const prep = await prepareImage(scope, opts, mode, checkAbort, input.process?.leader ?? null);
    return (await takeProcessImage(scope, prep, input, checkAbort)).result;
  } catch (err) {
    throw asTsnapError(err, `${mode} of process ${opts.pid}`);
  }
}

/**
 * The end of one round's tracking. commit: the image is kept (the final dump
 * also ends the tracking). abort: pages this round write-protected but no
 * kept image stores count as written again, and a tracking the round
 * started ends with it.
 */
function roundEnd(tr: Tracking, rec: RoundRecord, armed: () => Range[], mode: Mode, endWithTheSet: boolean): RoundEnd {
  let done = false;
  const commitFd = () => { const fd = tr.commitFd; tr.commitFd = -1; return fd; };
  return {
    commit(frozen?: FrozenSet | null) {
      if (done) return;
      done = true;
      // From now on an image names the holder: it may outlive this run. A
      // final dump's holder does not (it goes below), and its record with it.
      if (mode !== 'dump') rec.committed();
      const fd = commitFd();
      if (fd >= 0) {
        if (mode === 'dump') closeSync(fd);
        else commitHolder(fd);
      }
      closeSync(tr.uffd);
      // The final dump ends tracking: killing the holder closes the last
      // copy, and the kernel unregisters everything.
      if (mode !== 'dump') return;
      if (!frozen || frozen.isFinished) { stopHolder(tr.ref); return; }
      // Post-copy (`leaveOut`): the held process is read for seconds yet,
      // and the holder's exit would hold its mmap lock for writing while
      // the kernel takes the write-protection off every tracked page (4 GiB:
      // hundreds of ms at the holder's idle priority), every
      // process_vm_readv of the page service waiting behind it while the
      // receiver's process waits for those pages. The tracking ends with
      // the held set instead.
      if (endWithTheSet) { frozen.attach(holderEndingWithTheSet(tr.ref)); return; }
      const ending = signalHolder(tr.ref);
      if (ending) frozen.attach(ending);
    },
    abort() {
      if (done) return;
      done = true;
      for (const r of armed()) {
        try { uffdWriteProtect(tr.uffd, r.start, r.end - r.start, false); } catch { /* unmapped meanwhile */ }
      }
      try { closeSync(tr.uffd); } catch { /* closed */ }
      // Its holder exits on end-of-file of an uncommitted pipe.
      const fd = commitFd();
      if (fd >= 0) { try { closeSync(fd); } catch { /* closed */ } }
      // A tracking this run started dies with it; a parent's stays usable.
      if (tr.fresh) stopHolder(tr.ref);
    },
  };
}

function level(img: Image): ChainLevel {
  // The columns the image was decoded into; the objects only if some reader asks.
  return { kind: img.inventory.kind, get runs() { return img.pagemap.runs; }, table: runTableOf(img.pagemap) };
}

function readParent(dir: string, pid: number, cache?: ChainCache): Image[] {
  const chain = readChain(resolve(dir), { indexOnly: true, ...(cache ? { cache: cache.images } : {}) });
  const inv = chain[0].inventory;
  if (inv.pid !== pid) {
    throw new TsnapError('badImage', `parent image ${dir} is of process ${inv.pid}, not ${pid}`);
  }
  refuseOtherProcess(dir, inv, pid);
  return chain;
}

/** Throws once the process of a loop's first round (opts.targetPidfd) has ended; a no-op without one. */
function targetCheck(opts: DumpOptions): () => void {
  const gone = opts.targetGone ?? (() => endedSinceFirstRound(opts.pid));
  return () => refuseIfEnded(opts.targetPidfd, gone);
}

export function anonResidentBytes(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ').map(Number);
    return Math.max(0, f[1] - f[2]) * PAGE_SIZE;
  } catch {
    return 0;
  }
}

/** An index no reader would accept is never written: the round fails instead (exit 1). */
function checkIndex(runs: PageRun[], writer: PageSink, dir: string): void {
  try {
    validateRuns(runs, writer.chunks, dir);
  } catch (err) {
    throw new TsnapError('internal', `the page index built for ${dir} is invalid (${(err as Error).message}); no image was written. Please report this`);
  }
}

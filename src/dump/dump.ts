/**
 * `tsnap dump` and `tsnap pre-dump`: one round of taking an image.
 *
 * dump: freeze, record the whole state, copy memory (all of it, or with
 * --parent only what changed since the parent image), write the image, end
 * any tracking, then kill or resume the target. Any failure before the end
 * leaves the target exactly as it was.
 *
 * pre-dump: copy memory while the target runs, tracking writes with
 * userfaultfd so that the next round (pre-dump or dump with --parent) copies
 * only the pages written since. The target stops only to have userfaultfd()
 * injected, once per tracking.
 */
import { mark } from '../trace.js';
import { randomUUID } from 'node:crypto';
import { release as kernelRelease } from 'node:os';
import { dirname, relative, resolve } from 'node:path';
import { closeSync, existsSync, readFileSync, readlinkSync } from 'node:fs';
import { ProcMem, Pagemap } from '../sys/index.js';
import { readStat, readStatus, readMaps, readCwd } from '../proc/index.js';
import { FrozenProcess } from '../freeze/frozen-process.js';
import { FrozenSet } from '../freeze/frozen-set.js';
import { withAbortSignals, letSignalsIn } from '../freeze/safety-net.js';
import { pausePoint, holdPoint } from '../fault-points.js';
import { commitHolder } from '../track/holder.js';
import { RoundRecord } from '../track/round-record.js';
import { collectRemoteState } from './task-state.js';
import { checkCreds } from './creds.js';
import { readLayout, assembleProcess, checkOomScoreAdj } from './process-state.js';
import { recordGuards } from './guards.js';
import { DEAD_PROC_DIR } from '../proc/links.js';
import { readFds } from './fds.js';
import { checkSysvShm, isSysvShmVma } from './sysv-shm.js';
import { tcpRepair } from '../files/tcp.js';
import { isMemfdPath } from '../files/fifo-memfd.js';
import { isMappedGhost, checkMappedGhost } from '../files/ghost-map.js';
import { isAioRing, checkAioRings } from '../files/aio.js';
import { copyPages, fullSelection, type CopyOptions } from './page-dumper.js';
import { selectDelta } from './delta-selection.js';
import { normalize, subtract, type Range } from '../image/ranges.js';
import { openTracking, stopHolder, type Tracking } from '../track/tracking.js';
import { signalHolder } from '../track/holder.js';
import { uffdWriteProtect } from '../track/uffd.js';
import { PageFileWriter, DEFAULT_CHUNK_SIZE } from '../image/page-file.js';
import type { PageSink } from './page-sink.js';
import { writeMetaFile } from '../image/metadata.js';
import { encodePagemap, validateRuns } from '../image/page-runs.js';
import { prepareImageDir, discardImageDir, fsyncDir } from '../image/image-dir.js';
import { readChain, type Image } from '../image/image-reader.js';
import { resolveChain, storedRanges } from '../image/chain-index.js';
import { TsnapError, asTsnapError, interrupted } from '../errors.js';
import { refuseUndumpable } from './target-check.js';
import { FileKind, FORMAT_VERSION, PageWhere, type Compression, type DumpStats, type FdImage, type Inventory, type PageRun, type TrackingRef, type VmaImage, type ThreadImage } from '../../formats/schema.js';
import { TOOL_VERSION } from '../version.js';
import { CowWorker, CowLost, copyWithCow, killReleased, type CowCopyResult } from './cow-session.js';
import { FrozenClock } from './frozen-clock.js';
import { prearmCow, type Prearmed } from './cow-prearm.js';
import { VmFlagsWatch } from '../proc/vmflags-watch.js';
import { SmapsReader } from '../proc/smaps-reader.js';
import { PAGE_SIZE } from '../sys/uapi.js';

export interface DumpOptions {
  pid: number;
  dir: string;
  /** Called right before the freeze, after the checks (migrate lifts its throttle there: a throttled task is slow to stop). */
  beforeFreeze?: () => void;
  /** Resume the target after the dump instead of killing it. */
  leaveRunning?: boolean;
  compression?: Compression;
  /** fsync the image before the target is killed (default: when killing). */
  fsync?: boolean;
  chunkSize?: number;
  /** Parent image: store only what changed since it (needs its tracking). */
  parent?: string;
  /** Bytes of memory copied so far, of `total` to copy this round. */
  onProgress?: (p: { bytes: number; total: number; pid: number }) => void;
  warn?: (msg: string) => void;
  /**
   * Keep the target frozen after the image is complete and hand it to the
   * caller (result.held), who finishes it: a migration kills the source
   * only once the receiver holds the image.
   */
  hold?: boolean;
  /**
   * The target, already frozen by the caller (a tree dump freezes every
   * process first), with its fds as read across the tree. The caller's
   * FrozenSet keeps it: it is neither released nor killed here.
   */
  frozen?: { process: FrozenProcess; fds: FdImage[] };
  /** Tree dumps: shared anonymous objects an earlier member of the tree stores (dump/shared-memory.ts). */
  sharedElsewhere?: ReadonlySet<string>;
  /**
   * The caller commits several images as one (a tree): this round's
   * tracking is neither ended nor undone here but handed back
   * (result.round), for the caller to commit or abort with the rest.
   */
  deferRound?: boolean;
  /**
   * A round that is one member of a larger image (a tree): its tracking
   * record counts it as committed only once this file (the tree's manifest)
   * exists, should tsnap die between the two.
   */
  commitFile?: string;
  /** Take established TCP connections with TCP repair mode (see src/files/tcp.ts). */
  tcpEstablished?: boolean;
  /** Bytes of data a deleted file may hold to be stored in the image (default GHOST_LIMIT, 64 MiB). */
  ghostLimit?: number;
  /**
   * migrate --postcopy: given the round's layout and the pages it selected,
   * the memory it leaves out of its copy (result.leftOut: any memory the
   * caller serves later from the held process, selected or not). Only a
   * held image (`hold`) leaves anything out.
   */
  leaveOut?: (vmas: readonly VmaImage[], selected: Range[], threads: readonly ThreadImage[]) => Range[];
  /** Unix datagram sockets connected to a named socket outside the dump connect to that name again at restore (src/files/unix.ts). */
  extUnixSk?: boolean;
  /** Take connected TCP sockets as closed ones (see SocketOptions.tcpClose). */
  tcpClose?: boolean;
  /**
   * Streamed migration (migrate/page-stream.ts): the chunks go to this sink
   * instead of the image's pages file, which is then not written here.
   */
  pageSink?: (compression: Compression, chunkSize: number) => Promise<PageSink>;
  /** Called with the round's layout once its pages are selected, before any is copied. */
  onLayout?: (l: RoundLayout) => Promise<void>;
  /**
   * Copy-on-write (dump/cow-session.ts): frozen only for the state, the
   * memory is copied while the target runs; in kill mode it is killed once
   * the image is committed. For a process this dump freezes itself, full
   * or the final delta of a chain; a tree member or a hold (migration)
   * copies frozen. Memory lost under the copy (unmapped) makes dump() take
   * the image again, frozen. 'auto': only when the process holds at least
   * COW_MIN_BYTES of anonymous memory; below, copying it frozen takes less
   * than setting copy-on-write up (a worker thread, the uffd).
   */
  cow?: boolean | 'auto';
}

/** What a round changes in the address space, known before its pages are copied. */
export interface RoundLayout {
  vmas: VmaImage[];
  /** Pages the round records as absent (PageWhere.Zero). */
  zero: Range[];
  /** A delta on its parent; false: everything not in this round is absent. */
  incremental: boolean;
}

export type PreDumpOptions = Omit<DumpOptions, 'leaveRunning' | 'fsync'>;

export interface DumpResult {
  dir: string;
  imageId: string;
  kind: 'full' | 'delta';
  stats: DumpStats;
  killed: boolean;
  /** Why the parent's tracking could not be used (everything was copied), or null. */
  trackingLost: string | null;
  /** With `hold`: the target, still frozen, for the caller to finish. */
  held: FrozenSet | null;
  /** With `deferRound`: this round's tracking, to commit or abort with the caller's image. */
  round: RoundEnd | null;
  /** When the target was frozen (process.hrtime.bigint()), for downtime accounting. */
  frozenAt: bigint | null;
  /** With `leaveOut`: the memory this image does not hold (sorted ranges; the caller serves it). */
  leftOut?: Range[];
}

/**
 * The end of one round's tracking. commit: the image is kept (the final dump
 * also ends the tracking). abort: pages this round write-protected but no
 * kept image stores count as written again, and a tracking the round
 * started ends with it.
 */
export interface RoundEnd {
  /**
   * The round is part of a committed image. A final dump ends the
   * tracking; given the frozen set it was taken from, the wait for that end
   * is left to the set's release (a set that is killed never waits).
   */
  commit(frozen?: FrozenSet | null): void;
  abort(): void;
}

function roundEnd(tr: Tracking, rec: RoundRecord, armed: () => Range[], mode: 'dump' | 'predump'): RoundEnd {
  let done = false;
  const commitFd = () => { const fd = tr.commitFd; tr.commitFd = -1; return fd; };
  return {
    commit(frozen) {
      if (done) return;
      done = true;
      // From now on an image names the holder: it may outlive this run.
      rec.committed();
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
      const gone = signalHolder(tr.ref);
      if (gone) frozen.attach({ release: gone, forget: () => {} });
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

export async function dump(opts: DumpOptions): Promise<DumpResult> {
  try {
    return await takeImage(opts, 'dump');
  } catch (err) {
    if (!(err instanceof CowLost)) throw err;
    // The first attempt left no trace; this one stops the target for the whole copy.
    opts.warn?.(`${err.message}; dumping process ${opts.pid} again, frozen for the whole copy`);
    return takeImage({ ...opts, cow: false }, 'dump');
  }
}

export function preDump(opts: PreDumpOptions): Promise<DumpResult> {
  return takeImage({ ...opts, leaveRunning: true, fsync: false }, 'predump');
}

const ALL: Range[] = [{ start: 0, end: 2 ** 47 }];

/** cow: 'auto' below this much anonymous memory copies frozen (~20 ms of copy, about what copy-on-write costs to set up). */
export const COW_MIN_BYTES = 32 << 20;

async function takeImage(opts: DumpOptions, mode: 'dump' | 'predump'): Promise<DumpResult> {
  const t0 = process.hrtime.bigint();
  const { pid } = opts;
  const compression = opts.compression ?? 'none';
  const fsync = opts.fsync ?? !opts.leaveRunning;
  checkTarget(pid);
  const parent = opts.parent ? readParent(opts.parent, pid) : null;
  const dir = prepareImageDir(opts.dir);
  /** The freeze this dump made itself (not a tree member's). */
  let set: FrozenSet | null = null;
  let writer: PageSink | null = null;
  let round: RoundEnd | null = null;
  let record: RoundRecord | null = null;
  let armed: Range[] = [];
  let cowWorker: CowWorker | null = null;
  let cowPrearmed: Prearmed | null = null;
  let flagsWatch: VmFlagsWatch | null = null;
  let earlyFlags: Map<number, string[]> | null = null;
  let smapsReader: SmapsReader | null = null;
  /** Set once a copy-on-write final round took VMAs from the parent's tracking. */
  let cowTracking: { uffd: number; dropped: boolean; ref: TrackingRef } | null = null;
  // Known before the scan: the tracking's record names the round's image.
  const imageId = randomUUID();
  try {
    return await withAbortSignals(async (checkAbort) => {
      // Buffers are allocated and touched before any freeze, not during it.
      writer = opts.pageSink ? await opts.pageSink(compression, opts.chunkSize ?? DEFAULT_CHUNK_SIZE) : await PageFileWriter.create(dir.path, compression, opts.chunkSize ?? DEFAULT_CHUNK_SIZE);
      const pageWriter = writer;
      // What the chain already holds depends on the images only: work it out
      // before the target is stopped.
      const chainStored = parent ? storedRanges(resolveChain(parent.map(level), ALL)) : null;
      // Tracking is found (or injected, stopping the target briefly) before
      // the dump's own freeze, which then lasts only for the last delta.
      let track: Tracking | null = null;
      if (mode === 'predump' || parent) {
        track = await openTracking(pid, parent?.[0].inventory.tracking ?? null, opts.frozen?.process.leader ?? null);
        for (const e of track.ended) opts.warn?.(`process ${pid} was already tracked (${e}); that tracking is ended: two chains on one process would clear each other's written pages`);
        if (track.fresh) pausePoint('holder-started');
        record = RoundRecord.open(track, parent ? { dir: parent[0].dir, imageId: parent[0].inventory.imageId } : null, opts.parent ?? null, { imageId, dir: dir.path, ...(opts.commitFile ? { commitFile: opts.commitFile } : {}) });
        round = roundEnd(track, record, () => armed, mode);
        if (record.distrust) track.lost = record.distrust;
        if (track.lost) opts.warn?.(`tracking of process ${pid} was lost (${track.lost}); copying all of its memory again`);
      }
      checkAbort();
      let frozen: FrozenProcess | null = null;
      if (opts.frozen) {
        frozen = opts.frozen.process;
      } else if (mode === 'dump') {
        // Files restore could not bring back are refused now, while the
        // target runs untouched; they are read again, consistently, frozen.
        readFds(pid, { tcpEstablished: opts.tcpEstablished, tcpClose: opts.tcpClose, extUnixSk: opts.extUnixSk, ghostLimit: opts.ghostLimit, enter: false });
        checkMappings(pid, opts.ghostLimit);
        checkCwd(pid);
        checkOomScoreAdj(pid);
        checkCreds(pid);
        if (opts.cow === true && !opts.leaveRunning && opts.tcpEstablished) {
          throw new TsnapError('usage', '--cow in kill mode lets the process run after its TCP connections are taken; use --leave-running or --no-cow');
        }
        const cow = opts.cow === true || (opts.cow === 'auto' && anonResidentBytes(pid) >= COW_MIN_BYTES);
        if (cow && !opts.hold) cowWorker = await CowWorker.start();
        if (overlapSmaps(pid)) smapsReader = await SmapsReader.start();
        // VmFlags read while the target runs, kept only if nothing could have changed them by the freeze (proc/vmflags-watch.ts).
        flagsWatch = smapsReader ? VmFlagsWatch.start(pid) : null;
        const flagsRead = flagsWatch ? (smapsReader as SmapsReader).read(pid) : null;
        // A full dump protects its memory now, while the target runs, right
        // before the freeze: what it writes meanwhile is protected again frozen (cow-prearm.ts).
        if (cowWorker && !parent) cowPrearmed = prearmCow(pid, cowWorker);
        earlyFlags = (await flagsRead) ?? null;
        holdPoint('flags-read');
        checkAbort();
        opts.beforeFreeze?.();
        mark('dump: freezing');
        set = FrozenSet.freeze(pid);
        mark('dump: frozen');
        set.attach(tcpRepair);
        frozen = set.processes[0];
        pausePoint('dump-frozen');
      }
      const ours = set as FrozenSet | null;
      const mem = new ProcMem(pid);
      const pagemap = new Pagemap(pid);
      try {
        const parts = new FrozenClock();
        // Read frozen, beside the remote syscalls rather than after them.
        const early = earlyFlags as Map<number, string[]> | null;
        const stale = early ? (flagsWatch as VmFlagsWatch).check(early, readMaps(pid).map((v) => v.start)) : 'not read';
        mark(stale ? `dump: VmFlags read frozen (${stale})` : 'dump: VmFlags from before the freeze');
        const vmFlags = !stale ? Promise.resolve(early) : smapsReader && frozen ? (smapsReader as SmapsReader).read(pid) : null;
        const remote = frozen ? collectRemoteState(frozen, mem) : null;
        parts.lap('stateUs');
        mark('dump: state read');
        const layout = readLayout(pid, opts.sharedElsewhere, (await vmFlags) ?? undefined);
        recordGuards(pagemap, layout.images);
        parts.lap('layoutUs');
        mark('dump: layout read');
        const processImage = remote ? assembleProcess(pid, remote, layout, opts.frozen?.fds, { tcpEstablished: !!opts.tcpEstablished, tcpClose: opts.tcpClose, extUnixSk: !!opts.extUnixSk, ghostLimit: opts.ghostLimit }) : null;
        parts.lap('processUs');
        mark('dump: process assembled');
        checkAbort();

        const tMem = process.hrtime.bigint();
        const incremental = !!(parent && track && !track.lost);
        let zero: Range[] = [];
        let selection;
        let trackStats = { freshVmas: 0, untrackedVmas: 0, oldVmas: 0 };
        const rec = record as RoundRecord | null;
        if (track && rec) {
          rec.beforeScan();
          pausePoint('before-scan');
          const delta = selectDelta(track.uffd, pagemap, layout.vmas, layout.classes, incremental ? chainStored : null, incremental ? rec.pending : [], mode === 'predump');
          armed = delta.armed;
          zero = delta.zero;
          selection = delta.here;
          trackStats = delta;
          pausePoint('scanned');
          rec.afterScan(armed);
          pausePoint('after-scan');
        } else {
          selection = fullSelection(pagemap, layout.vmas, layout.classes);
        }
        parts.lap('scanUs');
        mark('dump: scanned');
        void (smapsReader as SmapsReader | null)?.stop();
        smapsReader = null;
        let leftOut: Range[] = [];
        if (opts.leaveOut && opts.hold) {
          // A full copy's selection is a scan of the frozen target: taken whole here.
          if (!Array.isArray(selection)) selection = [...selection];
          const out = normalize(opts.leaveOut(layout.images, normalize(selection), processImage?.threads ?? []));
          leftOut = out;
          selection = selection.flatMap((r) => subtract([r], out).map((x) => ({ ...r, start: x.start, end: x.end })));
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
        if (cowWorker && track) cowTracking = { uffd: track.uffd, dropped: false, ref: track.ref };
        const pages = cowWorker && ours && frozen
          ? (cow = await copyWithCow({ pid, frozen, vmas: layout.vmas, classes: layout.classes, selection, writer: pageWriter, mem, worker: cowWorker, release: () => ours.release(), onProgress: copyOpts.onProgress, tracking: cowTracking ?? undefined, prearmed: cowPrearmed ? { done: cowPrearmed, pagemap } : null })).pages
          : await copyPages(pid, layout.vmas, selection, pageWriter, mem, copyOpts);
        // Every byte is read: a target that stays alive need not wait for the writes.
        let frozenUs = cow ? cow.frozenUs : frozen ? frozen.frozenUs() : (track?.frozenUs ?? 0);
        if (ours && opts.leaveRunning && !opts.hold) ours.finish('release');
        mark('dump: pages copied');
        await pageWriter.finish(fsync);
        mark('dump: pages finished');
        const memdumpUs = Number(process.hrtime.bigint() - tMem) / 1000;
        checkAbort();

        const runs: PageRun[] = [...pages.runs, ...zero.map((z) => ({ start: z.start, pages: (z.end - z.start) / PAGE_SIZE, where: PageWhere.Zero, chunk: 0, offset: 0 }))]
          .sort((a, b) => a.start - b.start);
        checkIndex(runs, pageWriter, dir.path);
        mark('dump: index checked');
        const files: Inventory['files'] = {};
        files.pagemap = writeMetaFile(dir.path, FileKind.Pagemap, { ...encodePagemap({ chunks: pageWriter.chunks, runs }), vmas: layout.images }, fsync);
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
          ...(track ? { vmasFresh: trackStats.freshVmas, vmasTracked: trackStats.oldVmas, vmasUntracked: trackStats.untrackedVmas, pagesVanished: vanished } : {}),
        };
        files.stats = writeMetaFile(dir.path, FileKind.Stats, stats, fsync);
        files.pages = { length: pageWriter.bytesStored, crc32: 0 };
        const inventory: Inventory = {
          formatVersion: FORMAT_VERSION,
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
        };
        // The inventory is the commit record: written last, then made durable.
        writeMetaFile(dir.path, FileKind.Inventory, inventory, fsync);
        if (fsync) fsyncDir(dir.path);
        mark('dump: inventory written');
        pausePoint('dump-committed');
        // A signal that came before this point still undoes the whole dump.
        await letSignalsIn();
        checkAbort();

        // The point of no return: the image is complete. Nothing from here
        // on awaits, so no signal can come between it and the finish.
        pausePoint('committed');
        mark('dump: signals checked');
        const deferred = opts.deferRound ? round : null;
        if (!opts.deferRound) (round as RoundEnd | null)?.commit(ours);
        mark('dump: round committed');
        let held: FrozenSet | null = null;
        if (ours && !ours.isFinished) {
          frozenUs = ours.frozenUs();
          stats.frozenUs = frozenUs;
          held = ours.finish(opts.hold ? 'hold' : opts.leaveRunning ? 'release' : 'kill');
        }
        mark('dump: finished');
        // Copy-on-write in kill mode: it ran during the copy, released; it ends now.
        if (cow && !opts.leaveRunning) killReleased(pid);
        return {
          dir: dir.path, imageId, kind: inventory.kind, stats,
          killed: mode === 'dump' && !opts.leaveRunning && !opts.hold && !opts.frozen,
          trackingLost: track?.lost ?? null,
          held,
          round: deferred,
          frozenAt: frozen?.frozenAt ?? null,
          ...(opts.leaveOut ? { leftOut } : {}),
        };
      } finally {
        pagemap.close();
        mem.close();
        (flagsWatch as VmFlagsWatch | null)?.close();
        flagsWatch = null;
      }
    }, (sig) => interrupted(sig, `interrupted by ${sig}; the ${mode} was abandoned and process ${pid} resumed unharmed`));
  } catch (err) {
    // Whatever failed, the target runs on as before and no partial image remains.
    (round as RoundEnd | null)?.abort();
    await (cowWorker as CowWorker | null)?.stop();
    await (smapsReader as SmapsReader | null)?.stop();
    (flagsWatch as VmFlagsWatch | null)?.close();
    // A tracking that lost VMAs to a copy-on-write round would miss their
    // writes: it ends, and the next round copies everything again.
    const dropped = cowTracking as { dropped: boolean; ref: TrackingRef } | null;
    if (dropped?.dropped) stopHolder(dropped.ref);
    const own = set as FrozenSet | null;
    try { own?.release(); } catch { /* gone */ }
    if (!own && !opts.frozen) tcpRepair.release();
    const w = writer as PageSink | null;
    if (w) await w.abort();
    discardImageDir(dir);
    if (err instanceof CowLost) throw err;
    throw asTsnapError(err, `${mode} of process ${pid}`);
  }
}

function level(img: Image) {
  return { kind: img.inventory.kind, runs: img.pagemap.runs };
}

function readParent(dir: string, pid: number): Image[] {
  const chain = readChain(resolve(dir), { indexOnly: true });
  const inv = chain[0].inventory;
  if (inv.pid !== pid) {
    throw new TsnapError('badImage', `parent image ${dir} is of process ${inv.pid}, not ${pid}`);
  }
  return chain;
}

function checkTarget(pid: number): void {
  if (!Number.isInteger(pid) || pid <= 0) throw new TsnapError('usage', `invalid pid ${pid}`);
  try {
    readStat(pid);
  } catch {
    throw new TsnapError('noSuchProcess', `no process with pid ${pid}; check the pid (ps -p ${pid})`);
  }
  if (pid === process.pid) throw new TsnapError('usage', 'tsnap cannot dump itself');
  refuseUndumpable(pid);
  const tgid = readStatus(pid).tgid;
  if (tgid !== pid) throw new TsnapError('usage', `${pid} is a thread of process ${tgid}; dump the process: tsnap dump --pid ${tgid}`);
}

/**
 * Memory mapped from a file that no longer has a name (a deleted file,
 * SysV shm) cannot be mapped again by restore: refused before the freeze.
 * Restorable look-alikes: memfds and SysV shm (stored whole, made again) and
 * shared anonymous memory (shows as "/dev/zero (deleted)").
 */
/**
 * A cwd removed under the process is restored as a deleted directory of
 * the same name, made in its parent: that parent must exist.
 */
export function checkCwd(pid: number): void {
  const cwd = readCwd(pid);
  // A cwd in another process's /proc directory names that process: it is
  // there again only if restore makes it (a --tree member), and a deleted
  // one (an exited task's) cannot be made at all.
  const inProc = /^\/proc\/(\d+)(\/|$| \(deleted\))/.exec(cwd);
  // The directory of a process that has exited is made again, as dead (restore/task-state.ts).
  if (DEAD_PROC_DIR.test(cwd)) return;
  if (inProc && (Number(inProc[1]) !== pid || cwd.endsWith(' (deleted)'))) {
    throw new TsnapError('unsupported', `the cwd of process ${pid} is ${cwd}, in the /proc directory of ${Number(inProc[1]) === pid ? 'itself, deleted' : `process ${inProc[1]}`}; restore could not enter it again`);
  }
  if (!cwd.endsWith(' (deleted)')) return;
  const parent = dirname(cwd.slice(0, -' (deleted)'.length));
  if (!existsSync(parent)) {
    throw new TsnapError('unsupported', `the cwd of process ${pid} is ${cwd}, and its parent ${parent} is gone too; restore could not recreate it`);
  }
}

export function checkMappings(pid: number, ghostLimit?: number): void {
  const vmas = readMaps(pid);
  checkSysvShm(pid, vmas);
  let exe = '';
  try { exe = readlinkSync(`/proc/${pid}/exe`); } catch { /* a kernel thread has none: nothing maps it */ }
  for (const v of vmas) {
    if (!v.deleted || v.inode === 0) continue;
    if (v.shared && v.path === '/dev/zero') continue;
    if (isMemfdPath(v.path)) continue; // stored whole (src/files/fifo-memfd.ts)
    if (isSysvShmVma(v)) continue; // stored whole (dump/sysv-shm.ts)
    if (isMappedGhost(v)) { checkMappedGhost(pid, v, exe, ghostLimit); continue; } // src/files/ghost-map.ts
    if (isAioRing(v)) continue; // stored and made again (src/files/aio.ts)
    throw new TsnapError('unsupported', `process ${pid} maps ${v.path} (deleted) at 0x${v.start.toString(16)}; memory mapped from this kind of deleted object cannot be restored yet`);
  }
  checkAioRings(pid, vmas.filter(isAioRing));
}

/**
 * Below this much resident memory smaps takes about a millisecond: not
 * worth a thread (one costs ~20-30 ms to start, before the freeze).
 */
const OVERLAP_SMAPS_BYTES = 32 << 20;

function overlapSmaps(pid: number): boolean {
  if (process.env.TSNAP_FROZEN_BASELINE === '1') return false;
  try {
    return Number(readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ')[1]) * PAGE_SIZE >= OVERLAP_SMAPS_BYTES;
  } catch {
    return false;
  }
}

function anonResidentBytes(pid: number): number {
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

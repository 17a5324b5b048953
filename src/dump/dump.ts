/**
 * `tsnap dump` and `tsnap pre-dump` of one process: a dump session
 * (session.ts) over that process, imaged by the step every dump shares
 * (image-process.ts). A tree is the same session over more processes
 * (tree.ts).
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
import type { ChainCache } from '../image/chain-cache.js';
import { mark } from '../trace.js';
import { dirname } from 'node:path';
import { closeSync, existsSync, readFileSync, readlinkSync } from 'node:fs';
import { readMaps, readCwd } from '../proc/index.js';
import type { FrozenProcess } from '../freeze/frozen-process.js';
import type { FrozenSet } from '../freeze/frozen-set.js';
import { withAbortSignals, letSignalsIn } from '../freeze/safety-net.js';
import { pausePoint, holdPoint } from '../fault-points.js';
import { prearmCow, type Prearmed } from './cow-prearm.js';
import { FrozenWindow } from './frozen-window.js';
import { collectBeforeWindow } from '../gc-before-window.js';
import { VmFlagsWatch } from '../proc/vmflags-watch.js';
import { checkCreds } from './creds.js';
import { checkOomScoreAdj } from './process-state.js';
import { DEAD_PROC_DIR } from '../proc/links.js';
import { readFds } from './fds.js';
import { checkSysvShm, isSysvShmVma } from './sysv-shm.js';
import { isMemfdPath } from '../files/fifo-memfd.js';
import { isMappedGhost, checkMappedGhost } from '../files/ghost-map.js';
import { isAioRing, checkAioRings } from '../files/aio.js';
import type { Range } from '../image/ranges.js';
import type { PageSink } from './page-sink.js';
import { TsnapError, asTsnapError, interrupted } from '../errors.js';
import { checkTarget } from './target-check.js';
import type { Compression, DumpStats, VmaImage, ThreadImage } from '../../formats/schema.js';
import { CowWorker, CowLost, killReleased } from './cow-session.js';
import { SmapsReader } from '../proc/smaps-reader.js';
import { PAGE_SIZE } from '../sys/uapi.js';
import { openTargetPidfd, refuseIfEnded, endedSinceFirstRound } from './target-identity.js';
import { DumpSession } from './session.js';
import { prepareImage, takeProcessImage, anonResidentBytes, type Mode } from './image-process.js';
import { scanBeforeFreeze, earlyScanWanted, type EarlyScan } from './early-scan.js';

export interface DumpOptions {
  pid: number;
  dir: string;
  /** Called right before the freeze, after the checks (migrate lifts its throttle there: a throttled task is slow to stop). */
  beforeFreeze?: () => void | Promise<void>;
  /**
   * Right before the freeze of a held round (a migration's final): whether
   * the guardian is to freeze the target's threads into the real-time
   * class (the caller's window, which also lists them for the watchdog).
   */
  raiseTarget?: (pid: number) => false | ((tid: number) => boolean);
  /** Resume the target after the dump instead of killing it. */
  leaveRunning?: boolean;
  compression?: Compression;
  /** fsync the image before the target is killed (default: when killing). */
  fsync?: boolean;
  chunkSize?: number;
  /** Parent image: store only what changed since it (needs its tracking). */
  parent?: string;
  /**
   * A caller taking round after round on one chain (migrate): the parent
   * chain's levels and its stored ranges, read and folded once for all
   * rounds (image/chain-cache.ts) instead of again by each.
   */
  chainCache?: ChainCache;
  /** Bytes of memory copied so far, of `total` to copy this round. */
  onProgress?: (p: { bytes: number; total: number; pid: number }) => void;
  warn?: (msg: string) => void;
  /**
   * Keep the target frozen after the image is complete and hand it to the
   * caller (result.held), who finishes it: a migration kills the source
   * only once the receiver holds the image.
   */
  hold?: boolean;
  /** Tree dumps: shared anonymous objects an earlier member of the tree stores (dump/shared-memory.ts). */
  sharedElsewhere?: ReadonlySet<string>;
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
   * held image (`hold`) leaves anything out. `recent`: what the parent
   * chain's newest rounds wrote (their `here` ranges, newest first, up to
   * two), taken before the freeze.
   */
  leaveOut?: (vmas: readonly VmaImage[], selected: Range[], threads: readonly ThreadImage[], recent: readonly Range[][]) => Range[];
  /** Unix datagram sockets connected to a named socket outside the dump connect to that name again at restore (src/files/unix.ts). */
  extUnixSk?: boolean;
  /** Take connected TCP sockets as closed ones (see SocketOptions.tcpClose). */
  tcpClose?: boolean;
  /**
   * Streamed migration (migrate/page-stream.ts): the chunks go to this sink
   * instead of the image's pages file, which is then not written here.
   */
  pageSink?: (compression: Compression, chunkSize: number) => Promise<PageSink>;
  /**
   * Keep the page data in one file (`pages`, a format 1 image) even where
   * the one-copy path would split it over two (format 2): for images sent
   * on as files (a tree migration's rounds).
   */
  onePagesFile?: boolean;
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
   * than setting copy-on-write up (the fault server's thread, the uffd).
   */
  cow?: boolean | 'auto';
  /**
   * A pidfd of the process, opened by a loop of rounds (dump --pre-dumps,
   * migrate) before its first: a round refuses once that process has ended,
   * as its pid may name a stranger by then (dump/target-identity.ts). The
   * caller closes it. Without it, dump() opens its own for its one round.
   */
  targetPidfd?: number;
  /** The refusal once the process behind targetPidfd has ended (default: endedSinceFirstRound). */
  targetGone?: () => TsnapError;
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
  /** A tree member's tracking round, which its session commits with the tree's manifest; null once committed. */
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

export async function dump(opts: DumpOptions): Promise<DumpResult> {
  // The process asked for, by a pidfd: a copy-on-write dump lets it run
  // during the copy, and by the retry below or kill mode's kill it may have
  // exited and its pid gone to another process (pid_max is 32768 here).
  // A loop's rounds share the pidfd of its first round's process.
  const own = opts.targetPidfd === undefined;
  const self = own ? openTargetPidfd(opts.pid) : opts.targetPidfd!;
  const gone = own ? () => exitedWhileDumped(opts.pid) : opts.targetGone ?? (() => endedSinceFirstRound(opts.pid));
  try {
    try {
      return await takeImage(opts, 'dump', self, gone);
    } catch (err) {
      if (!(err instanceof CowLost)) throw err;
      refuseIfEnded(self, gone);
      // The first attempt left no trace; this one stops the target for the whole copy.
      opts.warn?.(`${err.message}; dumping process ${opts.pid} again, frozen for the whole copy`);
      return await takeImage({ ...opts, cow: false }, 'dump', self, gone);
    }
  } finally {
    if (own && self !== null) closeSync(self);
  }
}

function exitedWhileDumped(pid: number): TsnapError {
  return new TsnapError('noSuchProcess', `process ${pid} exited while it was dumped (it ran during the copy-on-write copy); no image was written`);
}

export async function preDump(opts: PreDumpOptions): Promise<DumpResult> {
  // A pre-dump freezes nothing: its process may exit at any point of the
  // round, its pid reused. A pidfd says whether what was read by pid was of it.
  const own = opts.targetPidfd === undefined;
  const self = own ? openTargetPidfd(opts.pid) : opts.targetPidfd!;
  const gone = own ? () => exitedWhilePreDumped(opts.pid) : opts.targetGone ?? (() => endedSinceFirstRound(opts.pid));
  try {
    return await takeImage({ ...opts, leaveRunning: true, fsync: false }, 'predump', self, gone);
  } finally {
    if (own && self !== null) closeSync(self);
  }
}

function exitedWhilePreDumped(pid: number): TsnapError {
  return new TsnapError('noSuchProcess', `process ${pid} exited while it was pre-dumped; no image was written`);
}

/** cow: 'auto' below this much anonymous memory copies frozen (~20 ms of copy, about what copy-on-write costs to set up). */
export const COW_MIN_BYTES = 32 << 20;

/**
 * A session over one process: the pre-freeze checks, the freeze (dump) or
 * none (pre-dump), the process's image (image-process.ts), then the point
 * of no return and the one finish.
 */
/**
 * `self`: a pidfd of the process the dump is of, when the caller has one
 * (dump(), a loop's rounds): the pid must still be it, or `gone` says why not.
 */
async function takeImage(opts: DumpOptions, mode: Mode, self: number | null, gone: () => TsnapError): Promise<DumpResult> {
  const { pid } = opts;
  // A loop's process, before anything reads its pid: once ended, the pid may be a stranger's.
  if (opts.targetPidfd !== undefined) refuseIfEnded(self, gone);
  // A pidfd of our own was opened just now: checkTarget names what the pid is (a zombie, a thread...).
  checkTarget(pid);
  refuseIfEnded(self, gone);
  // The image's steps (prepareImage's tracking, the pre-dump's last check) look at it too.
  opts = self !== null ? { ...opts, targetPidfd: self, targetGone: gone } : opts;
  const session = new DumpSession();
  try {
    return await withAbortSignals(async (checkAbort) => {
      const prep = await prepareImage(session, opts, mode, checkAbort, null);
      mark('dump: prepared');
      let frozen: FrozenProcess | null = null;
      let smaps: SmapsReader | null = null;
      let cowWorker: CowWorker | null = null;
      let cowPrearmed: Prearmed | null = null;
      let flagsWatch: VmFlagsWatch | null = null;
      let earlyFlags: Map<number, string[]> | null = null;
      let earlyScan: EarlyScan | null = null;
      let cowWindow: FrozenWindow | null = null;
      if (mode === 'dump') {
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
        if (cow && !opts.hold) {
          const w = cowWorker = CowWorker.start();
          session.onFailure(() => w.stop());
        }
        if (overlapSmaps(pid)) {
          const r = smaps = await SmapsReader.start();
          session.onFailure(() => r.stop());
        }
        mark('dump: checked while running');
        holdPoint('before-watch');
        // VmFlags read while the target runs, kept only if nothing could have changed them by the freeze (proc/vmflags-watch.ts).
        // Only where the frozen time is the point (copy-on-write, a migration's
        // held final round): the counters cost ~60 ms to set up and ~0.5 s of
        // kernel time to tear down, against one smaps walk (~30 ms per GiB)
        // that a frozen copy of the whole memory would not notice.
        const watch = flagsWatch = smaps && (cowWorker || opts.hold) ? VmFlagsWatch.start(pid) : null;
        if (watch) session.onFailure(() => watch.close());
        mark('dump: VmFlags watch started');
        const flagsRead = watch ? (smaps as SmapsReader).read(pid) : null;
        // A held incremental round's walks of its present pages and guards, read now under the same watch (early-scan.ts).
        // Best effort: without it the walks are done frozen.
        if (watch && opts.hold && prep.parent && prep.track && !prep.track.lost && earlyScanWanted()) {
          try { earlyScan = scanBeforeFreeze(pid); } catch { earlyScan = null; }
        }
        // The frozen window is the point here: V8 collects now rather than in it (gc-before-window.ts).
        if (cowWorker || opts.hold) collectBeforeWindow('the freeze');
        // A full dump protects its memory now, while the target runs, right
        // before the freeze: what it writes meanwhile is protected again frozen (cow-prearm.ts).
        if (cowWorker && !prep.parent) {
          const w = cowWindow = new FrozenWindow();
          session.onFailure(() => w.end());
          cowPrearmed = prearmCow(pid, cowWorker, () => w.raise());
        }
        earlyFlags = (await flagsRead) ?? null;
        mark('dump: VmFlags read early');
        holdPoint('flags-read');
        checkAbort();
        await opts.beforeFreeze?.();
        mark('dump: freezing');
        if (cowWorker && !cowWindow) {
          const w = cowWindow = new FrozenWindow();
          session.onFailure(() => w.end());
        }
        const raiseTarget = cowWindow ? cowWindow.begin(pid) : opts.hold ? opts.raiseTarget?.(pid) ?? false : false;
        frozen = session.freeze(pid, { raise: raiseTarget });
        // Stopped, the pid cannot change hands: whoever holds it now is who the dump is of, or another process.
        refuseIfEnded(self, gone);
        mark('dump: frozen');
        pausePoint('dump-frozen');
      }
      const set = session.set;
      let outcome;
      try {
        outcome = await takeProcessImage(session, prep, {
          process: frozen,
          smaps,
          earlyFlags: earlyFlags && flagsWatch ? { flags: earlyFlags, watch: flagsWatch, scan: earlyScan } : null,
          cow: cowWorker && frozen ? { worker: cowWorker, release: () => { cowWindow?.releasing(); set.release(); cowWindow?.end(); }, prearmed: cowPrearmed } : null,
          releaseEarly: frozen && opts.leaveRunning && !opts.hold ? () => set.finish('release') : null,
        }, checkAbort);
      } finally {
        (flagsWatch as VmFlagsWatch | null)?.close();
      }
      const { result, cow } = outcome;
      cowWindow?.end();
      if (cowWindow?.stats && result.stats.cow) Object.assign(result.stats.cow, cowWindow.stats);
      pausePoint('dump-committed');
      // A signal that came before this point still undoes the whole dump.
      await letSignalsIn();
      checkAbort();

      // The point of no return: the image is complete. Nothing from here
      // on awaits, so no signal can come between it and the finish.
      pausePoint('committed');
      mark('dump: signals checked');
      session.commit();
      result.round?.commit(set);
      mark('dump: round committed');
      if (frozen && !set.isFinished) {
        result.stats.frozenUs = set.frozenUs();
        result.held = session.finish(opts.hold ? 'hold' : opts.leaveRunning ? 'release' : 'kill');
      } else {
        session.finish('release');
      }
      mark('dump: finished');
      // Copy-on-write in kill mode: it ran during the copy, released; it ends now.
      if (cow && !opts.leaveRunning) killReleased(pid, self);
      result.killed = mode === 'dump' && !opts.leaveRunning && !opts.hold;
      result.round = null;
      return result;
    }, (sig) => interrupted(sig, `interrupted by ${sig}; the ${mode} was abandoned and process ${pid} resumed unharmed`));
  } catch (err) {
    // Whatever failed, the target runs on as before and no partial image remains.
    await session.fail();
    if (err instanceof CowLost) throw err;
    throw asTsnapError(err, `${mode} of process ${pid}`);
  }
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
  // The directory of a process that has exited is made again, as dead (state/task-state.restore.ts).
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

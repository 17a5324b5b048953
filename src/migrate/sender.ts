/**
 * `tsnap migrate`: the pre-copy loop. Iteration 1 copies all memory while
 * the process runs (tracking armed first); each further iteration sends the
 * pages written during the previous one. The loop freezes the process when
 * the last round could be sent within the downtime budget at the measured
 * bandwidth, when rounds stop shrinking, or at the iteration cap — and says
 * which. The final, frozen delta and the process state follow; the source
 * is killed only after the receiver has committed the complete image.
 *
 * A process's rounds are streamed (wire v2, page-stream.ts): the round's
 * layout first, then its pages straight from the copy buffers, then the
 * image's small metadata files from a private staging directory (the next
 * round's parent). No page touches the source's disk. A tree's iterations
 * are still taken as images in staging and sent file by file, their page
 * data deleted once sent.
 */
import { ChainCache } from '../image/chain-cache.js';
import { mark, traceGc } from '../trace.js';
import { rehearseFrozenSteps } from '../dump/rehearsal.js';
import { PreCopyPolicy } from '../dump/precopy-policy.js';
import { Convergence, type NotConverging } from './convergence.js';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { rmSync, openSync, readSync, closeSync, readdirSync, fstatSync, readFileSync, accessSync, constants } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DumpOptions } from '../dump/dump.js';
import { StreamPageSink } from './page-stream.js';
import { takeSet, setTotals } from '../dump/take-set.js';
import { untrackPid } from '../track/untrack.js';
import { makeScratchDir } from './scratch-dir.js';
import { FrameReader, Msg, WIRE_VERSION, WIRE_MAGIC, encodeDoc, encodeFrame, decodeDoc, send } from './wire.js';
import { crc32 } from '../image/checksum.js';
import { TsnapError, asTsnapError, interrupted } from '../errors.js';
import { withAbortSignals, letSignalsIn } from '../freeze/safety-net.js';
import { pausePoint } from '../fault-points.js';
import type { FrozenSet } from '../freeze/frozen-set.js';
import { FileKind, type Compression, type ProcessImage } from '../../formats/schema.js';
import { readMetaFile } from '../image/metadata.js';
import { isInheritedStdio } from '../files/fd-kinds.js';
import { postcopyFinal, finishPostcopy, pagesOf, PostcopyLost } from './postcopy-send.js';
import type { Range } from '../image/ranges.js';
import { killAfterRestored } from './deferred-kill.js';
import { receiverReady } from './receiver-ready.js';
import { openTargetPidfd, refuseIfEnded } from '../dump/target-identity.js';
import { pidfdExited } from '../sys/index.js';
import { WindowPriority, ownWindowThreads } from './window-priority.js';
import { PeerLimit, PEER_TIMEOUT_MS } from './peer-limit.js';

export interface MigrateOptions {
  pid: number;
  host: string;
  port: number;
  token: string;
  downtimeMs?: number;
  maxIterations?: number;
  /** Bytes per second; 0 = unlimited. */
  bandwidthLimit?: number;
  leaveRunning?: boolean;
  compression?: Compression;
  tls?: { ca?: string; insecure?: boolean };
  /** The process and all its descendants (each iteration a tree image). */
  tree?: boolean;
  /** Take established TCP connections along (TCP repair mode, see src/files/tcp.ts). */
  tcpEstablished?: boolean;
  /** A writer faster than the link: throttle it (default), or stop trying (see convergence.ts). */
  whenNotConverging?: NotConverging;
  /**
   * Post-copy (postcopy-source.ts): 'on' after the rounds, 'auto' only when
   * pre-copy stops without converging; the final round's pages then follow
   * the resume on the receiver.
   */
  postcopy?: 'on' | 'auto';
  /**
   * `--peer-timeout`: how long a receiver may make no progress while the
   * source is frozen (peer-limit.ts); 0 = no limit. Default PEER_TIMEOUT_MS.
   */
  peerTimeoutMs?: number;
  /** The silence warning after COMMIT (default `warn`): the CLI prints it even with --quiet, the source being frozen. */
  warnFrozen?: (m: string) => void;
  onEvent?: (e: Record<string, unknown>) => void;
  warn?: (m: string) => void;
  /** Memory copied in the current round (see DumpOptions.onProgress). */
  onProgress?: (p: { bytes: number; total: number; pid: number }) => void;
}

export interface MigrateResult {
  iterations: number;
  stoppedBecause: string;
  bytesSent: number;
  totalMs: number;
  /** From the freeze of the source to the process running on the receiver (or committed, without restore). */
  downtimeMs: number;
  /** From the freeze to the receiver holding the complete image (the part before its restore). */
  freezeToCommitMs: number;
  receiverDir: string;
  restoredPid: number | null;
  restoreError: string | null;
  /** How a writer faster than the link was made to converge ("throttled to 60% CPU from round 4 ..."), or null. */
  convergence: string | null;
  /** Present when the migration went post-copy. */
  postcopy?: PostcopyFigures;
}

export interface PostcopyFigures {
  /** Why: 'requested' (--postcopy) or the pre-copy loop's stop reason (--postcopy auto). */
  because: string;
  pages: number;
  pagesRequested: number;
  pagesPushed: number;
  requests: number;
  /** From the freeze to the receiver's POSTCOPY_DONE: every page in the process there. */
  allInMs: number;
}

const FILE_ORDER = ['pages', 'pagemap', 'process', 'stats', 'inventory']; // inventory last: the commit record

export function migrate(opts: MigrateOptions): Promise<MigrateResult> {
  return withAbortSignals((checkAbort) => migrateIn(opts, checkAbort),
    (sig) => interrupted(sig, `interrupted by ${sig}`));
}

async function migrateIn(opts: MigrateOptions, checkAbort: () => void): Promise<MigrateResult> {
  traceGc();
  const t0 = process.hrtime.bigint();
  const ms = (from: bigint) => Number(process.hrtime.bigint() - from) / 1e6;
  const budget = opts.downtimeMs ?? 50;
  const cap = opts.maxIterations ?? 10;
  if (cap < 1 && opts.postcopy !== 'on') throw new TsnapError('usage', '--max-iterations 0 (no pre-copy round) needs --postcopy: without it the whole memory would be copied frozen; give at least 1');
  if (opts.postcopy && opts.tree) throw new TsnapError('usage', '--postcopy migrates one process; drop --tree or --postcopy');
  if (opts.postcopy && opts.leaveRunning) throw new TsnapError('usage', '--postcopy moves the process (its newest pages exist only on the source until served); drop --leave-running or --postcopy');
  // Every round is of the process found now: by its pidfd, not its pid,
  // which may go to a stranger should it exit between two rounds.
  const targetPidfd = openTargetPidfd(opts.pid) ?? undefined;
  const targetGone = () => new TsnapError('noSuchProcess', `process ${opts.pid} exited during its migration; pid ${opts.pid} may name another process now, which tsnap left alone; nothing was committed on the receiver`);
  const ended = () => targetPidfd !== undefined && pidfdExited(targetPidfd);
  let sock: Socket;
  try {
    sock = await connectTo(opts);
  } catch (err) {
    if (targetPidfd !== undefined) closeSync(targetPidfd);
    throw err;
  }
  const reader = new FrameReader(sock);
  const peer = new PeerLimit(sock, { limitMs: opts.peerTimeoutMs ?? PEER_TIMEOUT_MS, peer: `${opts.host}:${opts.port}`, pid: opts.pid, checkAbort, warn: opts.warnFrozen ?? opts.warn ?? ((m) => process.stderr.write(`tsnap: warning: ${m}\n`)) });
  const scratch = makeScratchDir(stagingBase(opts), 'migrate', ['/dev/shm', tmpdir()]);
  const staging = scratch.path;
  let held: FrozenSet | null = null;
  let receiverCommitted = false;
  let bytesSent = 0;
  const conv = new Convergence(opts);
  const prio = new WindowPriority();
  // Each round's parent chain is the last round's plus one level: read once (image/chain-cache.ts).
  // TSNAP_CHAIN_CACHE=0: every round reads the chain again, as before (bench's baseline in the same run).
  const chainCache = process.env.TSNAP_CHAIN_CACHE === '0' ? undefined : new ChainCache();
  try {
    await send(sock, encodeDoc(Msg.Hello, { magic: WIRE_MAGIC, version: WIRE_VERSION, token: opts.token, pid: opts.pid, tool: 'tsnap' }));
    const ok = decodeDoc<{ dir: string }>(await reader.expect(Msg.HelloOk, 'greeting the receiver'));
    opts.onEvent?.({ event: 'connected', receiverDir: ok.dir });

    /** Streamed rounds: the round's layout and pages go out while it is taken (ITER_BEGIN already sent). */
    let streamed = 0;
    // A tree's rounds go as image files, one pages file each (the wire names the files it carries).
    const streaming = (): Pick<DumpOptions, 'pageSink' | 'onLayout' | 'onePagesFile'> => (opts.tree ? { onePagesFile: true } : {
      pageSink: async (compression, chunkSize) => new StreamPageSink(sock, compression, chunkSize, opts.bandwidthLimit ?? 0, (n) => { streamed += n; }),
      onLayout: (l) => send(sock, encodeDoc(Msg.Layout, { vmas: l.vmas, zero: l.zero.map((z) => [z.start, z.end]), incremental: l.incremental })),
    });
    // ready: the receiver answers READY once it is prepared for the final round (receiver-ready.ts).
    const beginIteration = (name: string, ready = false) => (opts.tree ? Promise.resolve() : send(sock, encodeDoc(Msg.IterBegin, { name, ...(ready ? { ready: true } : {}) })));

    const sendImage = async (dir: string, name: string) => {
      const t = process.hrtime.bigint();
      if (opts.tree) await send(sock, encodeDoc(Msg.IterBegin, { name }));
      let bytes = streamed;
      streamed = 0;
      // A tree image: every process's directory (as "<pid>/<file>"), the manifest last.
      const subdirs = opts.tree ? readdirSync(dir).filter((d) => /^\d+$/.test(d)) : [''];
      for (const sub of subdirs) {
        const at = join(dir, sub);
        const present = new Set(readdirSync(at));
        for (const file of FILE_ORDER) {
          if (!present.has(file)) continue;
          bytes += await sendFile(sock, join(at, file), sub ? `${sub}/${file}` : file, opts.bandwidthLimit ?? 0);
        }
        rmSync(join(at, 'pages'), { force: true }); // the next round needs the metadata only
      }
      if (opts.tree) bytes += await sendFile(sock, join(dir, 'tree'), 'tree', 0);
      await send(sock, encodeDoc(Msg.IterEnd, {}));
      bytesSent += bytes;
      return { bytes, sendMs: ms(t) };
    };

    /** One pre-dump round (a session over the process or its tree) and its totals. */
    const round = async (dir: string, parent: string | undefined): Promise<Round> => {
      const t = await takeSet({ pid: opts.pid, targetPidfd, targetGone, dir, parent, chainCache, compression: opts.compression, warn: opts.warn, onProgress: opts.onProgress, ...streaming() }, 'predump', !!opts.tree);
      return { dir: t.dir, ...setTotals(t) };
    };

    let stoppedBecause = `reached the iteration cap (${cap})`;
    let converged = false;
    // Small rounds alone do not stop a migration: only the downtime budget, shrinking and the cap.
    const policy = new PreCopyPolicy({ maxRounds: cap, downtimeBudgetMs: budget, smallEnoughPages: -1, ...conv.rule() });
    let prev: Round | null = null;
    let k = 0;
    let bandwidth = 0; // bytes per ms, measured end to end (copy + send)
    while (k < cap) {
      checkAbort();
      k++;
      const tIter = process.hrtime.bigint();
      await beginIteration(String(k));
      const r = await round(join(staging, String(k)), prev ? join(staging, String(k - 1)) : undefined);
      // Once, early: the final round then runs warm code (dump/rehearsal.ts).
      if (k === 1 && !opts.tree) {
        const us = rehearseFrozenSteps(opts.pid, () => refuseIfEnded(targetPidfd, targetGone));
        opts.onEvent?.({ event: 'rehearsal', frozenMs: +(us / 1000).toFixed(1) });
      }
      const s = await sendImage(r.dir, String(k));
      if (k === 1) pausePoint('migrate-first-iteration-sent');
      const iterMs = ms(tIter);
      bandwidth = s.bytes / Math.max(iterMs, 1);
      const dirtyRate = prev ? (r.bytesRaw / Math.max(iterMs, 1)) * 1000 : 0;
      // The final round will carry about what was written during this one.
      const estDowntime = r.bytesStored / Math.max(bandwidth, 1e-9);
      opts.onEvent?.({ event: 'iteration', iteration: k, pages: r.pagesWritten, bytes: s.bytes, ms: +iterMs.toFixed(1), bandwidthMBps: +(bandwidth / 1e3).toFixed(1), dirtyRateMBps: +(dirtyRate / 1e6).toFixed(1), estimatedDowntimeMs: +estDowntime.toFixed(1) });
      prev = r;
      const v = policy.afterRound({ pages: r.pagesWritten, estimatedDowntimeMs: estDowntime, bytes: r.bytesRaw, ms: iterMs });
      conv.afterVerdict(v, k);
      if (v.stop) { stoppedBecause = v.reason; converged = v.converged; break; }
    }

    // Downtime starts here: freeze, last delta, full state.
    const raiseAtReady = process.env.TSNAP_RAISE_AT === 'ready';
    const postcopyBecause = opts.postcopy === 'on' ? 'requested' : opts.postcopy === 'auto' && !converged ? stoppedBecause : null;
    const finalOpts = { pid: opts.pid, targetPidfd, targetGone, ...postcopyFinal(postcopyBecause !== null), dir: join(staging, 'final'), parent: k > 0 ? join(staging, String(k)) : undefined, chainCache, compression: opts.compression, hold: true, fsync: false, leaveRunning: opts.leaveRunning, warn: opts.warn, onProgress: opts.onProgress, tcpEstablished: opts.tcpEstablished, beforeFreeze: async () => {
      if (!opts.tree) await receiverReady(reader, checkAbort);
      if (raiseAtReady) prio.raise(ownWindowThreads());
      peer.guard();
      conv.lift();
    },
    // The source's threads in the window's class from the freeze on, as a
    // copy-on-write dump's (the guardian raises them after its seize and
    // gives their class back at a release, or at its own end should tsnap
    // die): in their own class, the stop alone took 10.7 ms at load 4.7, one
    // wake-up per thread behind the machine's other tasks, and every remote
    // syscall of the window is one more. TSNAP_MIG_TARGET_RT=0: as before.
    raiseTarget: (pid: number) => (process.env.TSNAP_MIG_TARGET_RT !== '0' ? prio.watchRaisedElsewhere(pid) : false) };
    // Raised from here to the receiver's answer (window-priority.ts), the
    // final round's preparation included: what the process writes while it
    // lasts (reading the chain, the checks, the watch, 0.3-0.55 s at 4 GiB
    // at load 8-11 in the normal class) is the last delta the frozen window copies.
    if (!raiseAtReady) prio.raise(ownWindowThreads());
    await beginIteration('final', true);
    mark(`migrate: final round (heap ${(process.memoryUsage().heapUsed / 2 ** 20).toFixed(0)} MiB)`);
    const final = await takeSet({ ...finalOpts, ...streaming() }, 'dump', !!opts.tree);
    held = final.held;
    peer.guard(); // armed before the freeze (beforeFreeze); here should a path not call it
    const leftOut: Range[] | null = final.leftOut ?? null;
    const frozenAt = final.frozenAt ?? process.hrtime.bigint();
    const finalDir = final.dir;
    pausePoint('migrate-held');
    mark('migrate: final dump done');
    await sendImage(finalDir, 'final');
    mark('migrate: final sent');
    if (leftOut && postcopyBecause !== null) {
      await send(sock, encodeDoc(Msg.Postcopy, { ranges: leftOut.map((r) => [r.start, r.end]) }));
      opts.onEvent?.({ event: 'postcopy', because: postcopyBecause, pages: pagesOf(leftOut) });
    }
    // The last moment the migration can still be called off: once the
    // receiver commits, it (and not the source) has the process.
    await letSignalsIn();
    checkAbort();
    const commit = send(sock, encodeDoc(Msg.Commit, {}));
    peer.commitSent();
    await commit;
    const committed = decodeDoc<{ dir: string; live?: boolean }>(await peer.waiting(reader.expect(Msg.Committed, 'waiting for the receiver to commit')));
    const freezeToCommitMs = Number(process.hrtime.bigint() - frozenAt) / 1e6;
    receiverCommitted = true;
    mark('migrate: committed');
    peer.stop();
    if (leftOut && postcopyBecause !== null) {
      // The page service may push for seconds: not in the real-time class.
      prio.restore();
      const pc = await finishPostcopy(sock, reader, opts, held!, leftOut, frozenAt, freezeToCommitMs, postcopyBecause);
      held = null;
      return { iterations: k + 1, stoppedBecause, bytesSent: bytesSent + pc.bytes, totalMs: ms(t0), downtimeMs: pc.downtimeMs, freezeToCommitMs, receiverDir: committed.dir, restoredPid: pc.restoredPid, restoreError: pc.restoreError, convergence: conv.describe(), postcopy: pc.figures };
    }
    // The receiver holds the complete image durably: the source may go.
    // (Connections in repair mode close silently with a killed source, and
    // come out of it again with one left running: the set does both.)
    const source = held;
    held = null; // never released from here on
    // Ending the source (a 1 GiB address space takes ~30 ms to tear down)
    // delays our reading of RESTORED, not the process: the receiver's own
    // clock says when it ran. Both are upper bounds; the tighter one counts.
    const windowMs = (reply: { payload: Buffer; type: Msg }) => {
      const doc = decodeDoc<{ sinceCommitUs?: number }>(reply);
      const mine = Number(process.hrtime.bigint() - frozenAt) / 1e6;
      return doc.sinceCommitUs !== undefined ? Math.min(mine, freezeToCommitMs + doc.sinceCommitUs / 1000) : mine;
    };
    const later = source && !opts.leaveRunning && !opts.tree && committed.live === true && !holdsSockets(finalDir) ? killAfterRestored(source) : null;
    if (later) pausePoint('migrate-kill-deferred');
    if (!later) {
      source?.finish(opts.leaveRunning ? 'release' : 'kill');
      mark('migrate: source finished');
      opts.onEvent?.({ event: 'committed', receiverDir: committed.dir, source: opts.leaveRunning ? 'left running' : 'killed' });
    }
    let restoredPid: number | null = null;
    let restoreError: string | null = null;
    let reply;
    try {
      reply = await (later ? later.bounded(reader.next()) : reader.next()).catch(() => null);
      // As post-copy does: said when RESTORED is read, before the source's end (watchers place the resume by it).
      if (reply?.type === Msg.Restored) opts.onEvent?.({ event: 'resumed', pid: decodeDoc<{ pid: number }>(reply).pid, downtimeMs: +windowMs(reply).toFixed(1) });
    } finally {
      if (later) {
        later.kill();
        mark('migrate: source finished');
        opts.onEvent?.({ event: 'committed', receiverDir: committed.dir, source: 'killed' });
      }
    }
    // The receiver is done with the connections (on this host, its restore lifted their locks itself).
    source?.settle();
    let downtimeMs = Number(process.hrtime.bigint() - frozenAt) / 1e6;
    if (reply?.type === Msg.Restored) {
      restoredPid = decodeDoc<{ pid: number }>(reply).pid;
      downtimeMs = Math.min(downtimeMs, windowMs(reply));
    } else if (reply?.type === Msg.RestoreFailed) restoreError = decodeDoc<{ message: string }>(reply).message;
    mark('migrate: receiver restored');
    prio.restore();
    return {
      iterations: k + 1, stoppedBecause, bytesSent, totalMs: ms(t0), downtimeMs, freezeToCommitMs,
      receiverDir: committed.dir, restoredPid, restoreError, convergence: conv.describe(),
    };
  } catch (caught) {
    if (caught instanceof PostcopyLost) throw caught;
    // The silence limit (or a signal during a network wait) ended the connection: that is the cause, not the closed socket.
    const err = peer.fired ?? caught;
    // Before COMMITTED nothing is lost: the source runs on as it was (its
    // connections out of repair mode with it: they belong to its set).
    try { held?.release(); } catch { /* gone */ }
    // An ended source's pid may be a stranger's now, tracked by someone else: its holders are not ours (ours exited with the source).
    const gone = !receiverCommitted && ended();
    for (const pid of trackedPids(staging, opts)) if (!(gone && pid === opts.pid)) untrackPid(pid);
    if (gone && !(err instanceof TsnapError && err.kind === 'interrupted')) throw targetGone();
    const reason = reader.bufferedError();
    const e = reason && !(err instanceof TsnapError && err.message.startsWith('migration peer refused'))
      ? new TsnapError('targetFailed', `migration peer refused: ${reason}`, err)
      : asTsnapError(err, `migration of process ${opts.pid}`);
    // After COMMIT left, the receiver may have committed before the connection ended (docs/migration.md).
    const twice = peer.mayHaveCommitted && !receiverCommitted
      ? `; COMMIT had been sent: if the receiver at ${opts.host}:${opts.port} committed before the connection ended, process ${opts.pid} runs there too (check it, and stop one of them)` : '';
    throw new TsnapError(e.kind, `migration of process ${opts.pid} failed; it runs on where it was: ${e.message}${twice}`, e.cause ?? err, e.exitCode);
  } finally {
    peer.stop();
    prio.restore();
    conv.release();
    sock.destroy();
    scratch.remove();
    if (targetPidfd !== undefined) closeSync(targetPidfd);
  }
}

/**
 * Sockets are the source's resources a receiver on the same network (in
 * another pid namespace only, or serve --new-pid) would need free: an
 * address to bind, a connection to take over. A source with any of its own
 * (stdio leading outside it aside: restore replaces those) is killed at
 * COMMITTED, as before, not after RESTORED (deferred-kill.ts).
 */
function holdsSockets(finalDir: string): boolean {
  try {
    return readMetaFile<ProcessImage>(finalDir, FileKind.Process).fds.some((f) => (f.kind === 'socket' || !!f.socket) && !isInheritedStdio(f));
  } catch {
    return true;
  }
}

/**
 * Where rounds are staged. A streamed round stages its metadata only (a
 * few KiB): in memory (tmpfs) when there is one, so that the final,
 * frozen round never waits for a busy disk. A tree's rounds stage their
 * pages too: the temporary directory, as before.
 */
function stagingBase(opts: MigrateOptions): string {
  if (opts.tree) return tmpdir();
  try {
    accessSync('/dev/shm', constants.W_OK);
    return '/dev/shm';
  } catch {
    return tmpdir();
  }
}

interface Round {
  dir: string;
  pagesWritten: number;
  bytesRaw: number;
  bytesStored: number;
}

/** Every process a failed migration may have left tracked: the root, and for a tree each one staged. */
function trackedPids(staging: string, opts: MigrateOptions): number[] {
  const pids = new Set([opts.pid]);
  if (opts.tree) {
    try {
      for (const it of readdirSync(staging)) {
        for (const d of readdirSync(join(staging, it))) if (/^\d+$/.test(d)) pids.add(Number(d));
      }
    } catch { /* nothing staged */ }
  }
  return [...pids];
}

async function connectTo(opts: MigrateOptions): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => reject(new TsnapError('targetFailed', `cannot connect to ${opts.host}:${opts.port}: ${e.message}`));
    const sock: Socket = opts.tls
      ? tlsConnect({ host: opts.host, port: opts.port, ca: opts.tls.ca ? readFileSync(opts.tls.ca) : undefined, rejectUnauthorized: !opts.tls.insecure }, () => resolve(sock))
      : netConnect({ host: opts.host, port: opts.port }, () => resolve(sock));
    sock.once('error', onError);
    sock.setNoDelay(true);
  });
}

/** Streams one file as FILE_BEGIN, FILE_DATA pieces of 1 MiB, FILE_END. */
async function sendFile(sock: Socket, path: string, name: string, limit: number): Promise<number> {
  await send(sock, encodeDoc(Msg.FileBegin, { name }));
  const fd = openSync(path, 'r');
  let crc = 0;
  let sent = 0;
  const t = Date.now();
  try {
    const size = fstatSync(fd).size;
    while (sent < size) {
      // A new buffer per piece, read into directly: the socket may still hold
      // the previous one, and copying it out of a reused buffer costs a copy
      // of every page sent.
      const buf = Buffer.allocUnsafe(Math.min(1 << 20, size - sent));
      const n = readSync(fd, buf, 0, buf.length, sent);
      if (n === 0) break;
      const piece = n === buf.length ? buf : buf.subarray(0, n);
      crc = crc32(piece, crc);
      await send(sock, encodeFrame(Msg.FileData, piece));
      sent += n;
      if (limit > 0) {
        const ahead = sent / limit * 1000 - (Date.now() - t);
        if (ahead > 0) await new Promise((r) => setTimeout(r, ahead));
      }
    }
  } finally {
    closeSync(fd);
  }
  await send(sock, encodeDoc(Msg.FileEnd, { length: sent, crc32: crc }));
  return sent;
}

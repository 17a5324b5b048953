/**
 * `tsnap serve`: the receiving end of a migration. Every connection gets
 * its own handshake, under a deadline, and must present the shared token
 * before anything is written; authenticated senders are then served one at
 * a time. Iterations arrive as image directories, file by file, and land
 * under DIR/<pid>-<time>/<n> as a normal image chain; every name built from
 * the stream is confined to DIR (confine.ts). After the sender's
 * COMMIT everything is durable; with --restore the process is restored from
 * the final image as soon as its pid is free.
 *
 * Streamed rounds (wire v2, stream-ingest.ts) also build the process while
 * they arrive, when its pid is free (or with --new-pid): after the commit
 * only the rest of restore remains. Should that fail, the process is
 * restored from the chain on disk instead, and the reply says so.
 */
import { mark, traceGc } from '../trace.js';
import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { timingSafeEqual, createHash } from 'node:crypto';
import { mkdirSync, chmodSync, openSync, writeSync, closeSync, fsyncSync, rmSync, readFileSync, realpathSync } from 'node:fs';
import { FrameReader, Msg, WIRE_VERSION, WIRE_MAGIC, MAX_FRAME, encodeDoc, decodeDoc, decodeHello, send } from './wire.js';
import { inside, wirePid, migrationDirName } from './confine.js';
import { checkCommittable } from './commit-check.js';
import { waitPidsFree } from './pid-wait.js';
import { crc32 } from '../image/checksum.js';
import { fsyncDir, makeDirs } from '../image/image-dir.js';
import { restore, waitForExit, type RestoreResult } from '../restore/restore.js';
import { StreamIngest, type LayoutDoc } from './stream-ingest.js';
import { readImage, type Image } from '../image/image-reader.js';
import { isTreeImage, readTreeManifest } from '../image/tree-manifest.js';
import { TsnapError, asTsnapError, withPath } from '../errors.js';
import { checkedRanges } from './postcopy-wire.js';
import { receivePostcopy } from './postcopy-receive.js';
import { warmUpRestore } from './warm-up.js';
import { EarlyVmFlags } from './live-vmflags.js';
import { WindowPriority, ownWindowThreads } from './window-priority.js';
import { collectBeforeWindow } from '../gc-before-window.js';
import type { Range } from '../image/ranges.js';

export interface ServeOptions {
  host: string;
  port: number;
  dir: string;
  token: string;
  restore?: boolean;
  /** Restore under a fresh pid (and so build the process while it arrives even when its pid is taken). */
  newPid?: boolean;
  /** Build the process while streamed rounds arrive (default); false: restore from the chain after the commit. */
  liveBuild?: boolean;
  /** With restore: restore one throwaway process before listening, so the first migration's restore runs warm code (warm-up.ts). Default true. */
  warmUp?: boolean;
  tls?: { cert: string; key: string };
  /** Stop after this many migrations (0: serve forever). */
  count?: number;
  /** Time a connection has to present its HELLO (and, with TLS, finish the TLS handshake). */
  handshakeTimeoutMs?: number;
  /** How long a migration waits for its sender's next byte before it is abandoned (until its commit; default IDLE_TIMEOUT_MS). */
  idleTimeoutMs?: number;
  stdout?: string;
  stderr?: string;
  onEvent?: (e: Record<string, unknown>) => void;
}

const FILE_NAMES = new Set(['inventory', 'process', 'pagemap', 'pages', 'stats']);
export const HANDSHAKE_TIMEOUT_MS = 10_000;
/**
 * A sender that goes silent mid-migration without closing (its host died,
 * the network partitioned) would hold the one migration slot, and a
 * half-built process, forever. The longest silence of a live sender is a
 * tree round taken to its staging directory before it is sent (seconds
 * per GiB on a loaded machine): 5 minutes leaves a wide margin.
 */
export const IDLE_TIMEOUT_MS = 300_000;
/** A HELLO is a few hundred bytes: an unauthenticated peer gets no bigger buffer. */
const HELLO_MAX_FRAME = 64 << 10;
/**
 * Connections in their handshake at once. A newcomer beyond it drops the
 * oldest, not itself: a real sender says HELLO within milliseconds, so
 * idle connections cannot keep it out unless opened faster than that.
 */
const MAX_UNAUTHENTICATED = 64;

function sameToken(a: string, b: string): boolean {
  // Compare digests: equal length for timingSafeEqual, no early exit on a prefix.
  const h = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(h(a), h(b));
}

interface Greeted {
  sock: Socket;
  reader: FrameReader;
  pid: number;
}

export function serve(opts: ServeOptions): Promise<{ server: Server; port: number; done: Promise<void> }> {
  traceGc();
  makeDirs(opts.dir);
  // Names are confined against the real directory: --dir may itself be a symlink.
  const base = realpathSync(opts.dir);
  const timeoutMs = opts.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS;
  let accepted = 0;
  const unauthenticated = new Set<Socket>(); // in arrival order
  let finish: () => void = () => {};
  const done = new Promise<void>((r) => { finish = r; });
  // One migration at a time; only authenticated connections ever wait here,
  // and each handshake runs on its own, so an idle or hostile peer holds up
  // no one.
  let queue = Promise.resolve();
  const handler = (sock: Socket) => {
    // A connection's errors are its own: without a listener, a reset would end the server.
    sock.on('error', () => {});
    // Replies are small and the sender waits on each (COMMITTED above all):
    // Nagle's algorithm against the sender's delayed ACK held them ~40 ms.
    sock.setNoDelay(true);
    if (unauthenticated.size >= MAX_UNAUTHENTICATED) {
      const oldest = unauthenticated.values().next().value!;
      unauthenticated.delete(oldest);
      oldest.destroy();
      opts.onEvent?.({ event: 'rejected', reason: 'busy' });
    }
    unauthenticated.add(sock);
    greet(sock, opts, timeoutMs).catch((err) => {
      sock.destroy();
      opts.onEvent?.({ event: 'failed', message: (err as Error).message });
      return null;
    }).then((g) => {
      unauthenticated.delete(sock);
      if (!g) return;
      if (opts.count && accepted >= opts.count) { sock.destroy(); return; }
      accepted++;
      queue = queue.then(() => receive(g, base, opts)).catch((err) => {
        opts.onEvent?.({ event: 'failed', message: (err as Error).message });
      }).then(() => {
        if (opts.count && accepted >= opts.count) { server.close(); finish(); }
      });
    });
  };
  let server: Server;
  try {
    server = opts.tls
      ? createTlsServer({ cert: readPem(opts.tls.cert, '--tls-cert'), key: readPem(opts.tls.key, '--tls-key'), handshakeTimeout: timeoutMs }, handler)
      : createServer(handler);
  } catch (err) {
    if (err instanceof TsnapError) throw err;
    throw new TsnapError('usage', `--tls-cert ${opts.tls?.cert} / --tls-key ${opts.tls?.key}: ${(err as Error).message}; give a PEM certificate and its private key`, err);
  }
  server.on('tlsClientError', (err: Error) => opts.onEvent?.({ event: 'rejected', reason: 'tls', message: err.message }));
  const warm = opts.restore && opts.warmUp !== false
    ? warmUpRestore().then(
      (ms) => opts.onEvent?.({ event: 'warmed-up', ms: +ms.toFixed(1) }),
      (err) => opts.onEvent?.({ event: 'warning', message: `the warm-up restore failed (${(err as Error).message}); migrations are still accepted, but restoring here may fail the same way` }))
    : Promise.resolve();
  return warm.then(() => new Promise((resolvePromise, reject) => {
    const onListenError = (err: NodeJS.ErrnoException) => {
      const why = err.code === 'EADDRINUSE' ? 'the address is in use (another tsnap serve?); choose another --listen'
        : err.code === 'EACCES' ? 'permission denied; choose a port above 1023 or run as root'
          : err.code === 'EADDRNOTAVAIL' ? 'this machine has no such address; choose one of its own for --listen'
            : err.message;
      reject(new TsnapError(err.code === 'EACCES' ? 'permission' : 'usage', `cannot listen on ${opts.host}:${opts.port}: ${why}`, err));
    };
    server.once('error', onListenError);
    server.listen(opts.port, opts.host, () => {
      server.off('error', onListenError);
      // After listen, an error (e.g. EMFILE on accept) concerns one connection, not the server.
      server.on('error', (err) => opts.onEvent?.({ event: 'failed', message: err.message }));
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : opts.port;
      opts.onEvent?.({ event: 'listening', host: opts.host, port });
      resolvePromise({ server, port, done });
    });
  }));
}

function readPem(path: string, option: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new TsnapError('usage', `cannot read ${option} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; give a PEM file`, err);
  }
}

/** The handshake, under its deadline: the authenticated peer, or null (already answered and closed). */
async function greet(sock: Socket, opts: ServeOptions, timeoutMs: number): Promise<Greeted | null> {
  const reader = new FrameReader(sock, HELLO_MAX_FRAME);
  const refuse = async (code: string, message: string, event: Record<string, unknown>) => {
    await send(sock, encodeDoc(Msg.Error, { code, message })).catch(() => {});
    sock.end();
    sock.destroySoon?.();
    opts.onEvent?.({ event: 'rejected', ...event });
    return null;
  };
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    send(sock, encodeDoc(Msg.Error, { code: 'timeout', message: `no HELLO within ${timeoutMs / 1000} s` })).catch(() => {}).finally(() => sock.destroy());
  }, timeoutMs);
  try {
    let hello;
    try {
      hello = await reader.next();
    } catch (err) {
      if (timedOut) { opts.onEvent?.({ event: 'rejected', reason: 'timeout' }); return null; }
      return await refuse('protocol', `not a tsnap migration stream: ${(err as Error).message}`, { reason: 'protocol', message: (err as Error).message });
    }
    if (timedOut) { opts.onEvent?.({ event: 'rejected', reason: 'timeout' }); return null; }
    if (!hello) { sock.destroy(); return null; }
    if (hello.type !== Msg.Hello) return await refuse('protocol', 'expected a tsnap HELLO', { reason: 'protocol' });
    let h: { magic?: unknown; version?: unknown; token?: unknown; pid?: unknown } | null;
    try { h = decodeHello(hello) as typeof h; } catch { h = null; }
    if (!h || typeof h !== 'object') return await refuse('protocol', 'expected a tsnap HELLO', { reason: 'protocol' });
    if (h.magic !== WIRE_MAGIC || h.version !== WIRE_VERSION) {
      return await refuse('version', `protocol version ${quote(h.version)} is not supported (this receiver speaks ${WIRE_VERSION}); use the same tsnap version on both ends`, { reason: 'version', version: quote(h.version) });
    }
    if (typeof h.token !== 'string' || !sameToken(h.token, opts.token)) return await refuse('token', 'wrong token', { reason: 'token' });
    const pid = wirePid(h.pid);
    if (pid === null) return await refuse('protocol', `HELLO pid must be a positive integer, got ${quote(h.pid)}`, { reason: 'protocol' });
    reader.maxFrame = MAX_FRAME;
    return { sock, reader, pid };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Says why the receiver gives up, then closes. The sender is still
 * writing and reads the reason only when its next write fails: closing
 * at once with its data unread would reset the connection and could drop
 * the reason in flight, so the socket closes after a moment instead.
 */
async function tellSender(sock: Socket, message: string | null): Promise<void> {
  if (sock.destroyed) return;
  if (message !== null) await send(sock, encodeDoc(Msg.Error, { code: 'failed', message })).catch(() => {});
  sock.end();
  setTimeout(() => sock.destroy(), 1000).unref();
}

/**
 * A peer's value in a message: quoted when a string, short, and never
 * through its own toString (a decoded map may carry a "toString" key).
 */
function quote(v: unknown): string {
  const s = typeof v === 'string' ? JSON.stringify(v)
    : v === null || ['number', 'bigint', 'boolean', 'undefined'].includes(typeof v) ? String(v)
      : `a ${Array.isArray(v) ? 'list' : 'map'}`;
  return s.length > 40 ? `${s.slice(0, 40)}...` : s;
}

/** DIR/<pid>-<time>, made 0700; a second migration of the same pid within the same millisecond gets a suffix. */
function newMigrationDir(base: string, pid: number): string {
  const now = Date.now();
  for (let attempt = 0; ; attempt++) {
    const root = inside(base, migrationDirName(pid, now, attempt));
    try {
      mkdirSync(root, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST' && attempt < 100) continue;
      throw err;
    }
    chmodSync(root, 0o700);
    return root;
  }
}

async function receive(g: Greeted, base: string, opts: ServeOptions): Promise<void> {
  const { sock, reader } = g;
  if (sock.destroyed) throw new TsnapError('targetFailed', `the sender of process ${g.pid} went away while waiting for its turn`);
  const root = newMigrationDir(base, g.pid);
  let committed = false;
  /** When COMMITTED went out: the sender's downtime is its freeze-to-commit plus our commit-to-running. */
  let committedAt = 0n;
  let last = '';
  /** migrate --postcopy: the final round's pages the process gets lazily from the source. */
  let postcopy: Range[] | null = null;
  const prio = new WindowPriority();
  const ingest = new StreamIngest({ pid: g.pid, build: !!opts.restore && opts.liveBuild !== false, newPid: opts.newPid, stdout: opts.stdout, stderr: opts.stderr, onEvent: opts.onEvent });
  /** Images as the commit check read them: complete ones from the ingest; with a live build, others by their index alone (their pages may still be on their way to the disk). */
  const readAtCommit = new Map<string, Image>();
  const readCommitted = (d: string): Image => {
    const done = ingest.image(d) ?? (ingest.live ? ingest.indexedImage(d) : undefined) ?? readAtCommit.get(d);
    if (done) return done;
    const img = readImage(d, ingest.live ? { indexOnly: true } : {});
    readAtCommit.set(d, img);
    return img;
  };
  const idleMs = opts.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
  reader.idleAfter(idleMs, () => new TsnapError('targetFailed', `the sender of process ${g.pid} sent nothing for ${idleMs / 1000} s; the migration was abandoned (serve --idle-timeout)`));
  try {
    await send(sock, encodeDoc(Msg.HelloOk, { version: WIRE_VERSION, dir: root }));
    opts.onEvent?.({ event: 'accepted', pid: g.pid, dir: root });
    let lastName: string | null = null;
    for (;;) {
      const f = await reader.next();
      if (!f) throw new TsnapError('targetFailed', 'the sender disconnected before committing');
      if (f.type === Msg.IterBegin) {
        const it = decodeDoc<{ name?: unknown; ready?: boolean }>(f);
        const name = typeof it?.name === 'string' ? it.name : '';
        if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) throw new TsnapError('badImage', `bad iteration name ${quote(it?.name)}`);
        lastName = null; // until it is complete
        mark(`serve: iteration ${name} begins`);
        // The downtime is about to start: this thread and the process it builds go first (window-priority.ts).
        // Raised after the early reads below, not before: those take ~120 ms of CPU at 4 GiB (a smaps walk),
        // and on one host with the sender's own final round in the real-time class on the other core, a
        // raised walk left the source no CPU: the process stopped 60-100 ms some 110 ms before its freeze in
        // 8 of 10 quiet 4 GiB runs at 10 MB/s (docs/performance.md, session 29). In the normal class the
        // walk shares its core with the source; at load 11-14 it took 0.1-0.6 s there, which only delays
        // READY (the source runs on meanwhile; its writes join the last delta). TSNAP_RAISE_AT=begin: before
        // the reads, as until then; ready: at READY.
        const raise = () => {
          prio.raise(ingest.live ? [...ownWindowThreads(), ingest.live.pid] : ownWindowThreads());
          if (ingest.live) {
            const lp = ingest.live.pid;
            ingest.live.beforeStart = (tids) => prio.restoreLike(tids, lp);
            ingest.live.threadsInherit = (on) => prio.inheritable(lp, on);
          }
        };
        const raiseAt = process.env.TSNAP_RAISE_AT;
        const raiseAtReady = raiseAt === 'ready';
        if (name === 'final' && raiseAt === 'begin') raise();
        // Sent before the source freezes: the self-check's smaps walk happens now, not after the commit (live-vmflags.ts).
        if (name === 'final' && ingest.live && opts.restore) {
          ingest.live.earlyVmFlags?.close();
          ingest.live.earlyVmFlags = EarlyVmFlags.read(ingest.live.pid);
          mark('serve: VmFlags read early');
        }
        if (name === 'final' && !raiseAtReady && raiseAt !== 'begin') raise();
        // The sender freezes the source on this (receiver-ready.ts): everything above is before its freeze,
        // V8's collection included (gc-before-window.ts).
        if (name === 'final') collectBeforeWindow('the downtime');
        if (name === 'final' && raiseAtReady) raise();
        if (it.ready === true) await send(sock, encodeDoc(Msg.Ready, {}));
        const live = await receiveIteration(reader, inside(root, name), ingest);
        lastName = name;
        mark(`serve: iteration ${name} received`);
        opts.onEvent?.({ event: 'iteration', name, ...live });
      } else if (f.type === Msg.Postcopy) {
        postcopy = checkedRanges(decodeDoc<{ ranges: [number, number][] }>(f).ranges, 'POSTCOPY');
        if (!ingest.live) throw new TsnapError('unsupported', `post-copy needs the process built while it arrives, and it is not (${ingest.notLive ?? 'serve runs without --restore or with --no-live-build'}); migrate without --postcopy`);
      } else if (f.type === Msg.Commit) {
        // From here the sender waits for us; after the commit (post-copy's page service) silence is the protocol's own business.
        reader.stopIdle();
        mark('serve: commit asked');
        // Without a live build the commit stands on the chain: every
        // streamed round's pages file on disk, checked against its index,
        // and durable. With one, the process itself holds everything and
        // the chain is its fallback, finished and synced off the critical
        // path (after the resume); its metadata is checked now all the same.
        // A power cut before the sync loses the process, as it would lose
        // it running a moment later.
        if (!ingest.live) {
          await ingest.flush();
          await ingest.durable();
        }
        try {
          last = checkCommittable(root, lastName, readCommitted);
        } catch (err) {
          await send(sock, encodeDoc(Msg.Error, { code: 'incomplete', message: (err as Error).message })).catch(() => {});
          throw err;
        }
        if (!ingest.live) fsyncDir(root);
        committed = true;
        // live: the process is built here already, so no restore here waits for the source's pid (see sender.ts).
        await send(sock, encodeDoc(Msg.Committed, { dir: last, ...(ingest.live ? { live: true } : {}) }));
        committedAt = process.hrtime.bigint();
        mark('serve: committed');
        opts.onEvent?.({ event: 'committed', dir: last });
        break;
      } else {
        throw new TsnapError('badImage', `unexpected ${Msg[f.type] ?? f.type} message`);
      }
    }
  } catch (err) {
    reader.stopIdle();
    prio.restore();
    await ingest.abort(); // no half-built process left behind
    if (!committed) rmSync(root, { recursive: true, force: true }); // an incomplete migration is nothing
    const e = asTsnapError(err, 'the receiver');
    const alreadyTold = err instanceof TsnapError && err.message.startsWith('COMMIT refused');
    await tellSender(sock, alreadyTold ? null : e.message);
    throw e;
  }
  // TSNAP_PC_WINDOW_RT=0: a post-copy restore in the normal class, as before (for comparison).
  if (!opts.restore || (postcopy && (!ingest.live || process.env.TSNAP_PC_WINDOW_RT === '0'))) prio.restore();
  if (!opts.restore) { sock.end(); return; }
  if (postcopy && ingest.live) {
    const live = ingest.live;
    // Kept: restore takes it (or the process is killed, which closes it).
    // The window stays in the real-time class up to RESTORED, as without
    // post-copy: what the restore starts (its guard, on the pool) begins in
    // the normal class (SCHED_RESET_ON_FORK), and the page service after
    // the resume runs in it too.
    try {
      await receivePostcopy(sock, reader, live, last, postcopy, {
        image: () => { live.image = readCommitted(last); },
        chainDone: async () => { await ingest.flush(); await ingest.durable(); },
        committedAt,
        windowOver: () => prio.restore(),
      }, opts);
    } finally {
      prio.restore();
    }
    return;
  }
  try {
    let r: RestoreResult | null = null;
    let fallback = ingest.notLive;
    const live = ingest.live;
    if (live) {
      try {
        live.image = readCommitted(last);
        mark('serve: final image read');
        r = await restore({ dir: last, stdout: opts.stdout, stderr: opts.stderr, newPid: opts.newPid }, live);
      } catch (err) {
        live.kill();
        fallback = `the process built while it arrived could not be finished (${(err as Error).message}); restored from the image chain instead`;
        opts.onEvent?.({ event: 'live-failed', message: fallback });
      }
    }
    if (!r) {
      // Before any other process is made (it would inherit a raised priority).
      prio.restore();
      await ingest.flush();
      await ingest.durable();
      // The source is killed once we said COMMITTED: wait for its pids to be free.
      const pids = isTreeImage(last) ? readTreeManifest(last).processes.map((p) => p.pid) : [g.pid];
      if (!opts.newPid) await waitPidsFree(pids, { onHeld: (pid, message) => opts.onEvent?.({ event: 'waiting-for-pid', pid, message }) });
      r = await restore({ dir: last, stdout: opts.stdout, stderr: opts.stderr, newPid: opts.newPid });
    }
    const sinceCommitUs = Number(process.hrtime.bigint() - committedAt) / 1000;
    const path = live && !fallback ? 'live' : 'disk';
    mark('serve: restored');
    void waitForExit(r.pid); // reap it when it ends
    // What restore's own check found different from the image: told, never dropped.
    for (const message of r.warnings) opts.onEvent?.({ event: 'warning', pid: r.pid, message });
    await send(sock, encodeDoc(Msg.Restored, { pid: r.pid, restoreUs: r.stats.restoreUs, path, sinceCommitUs, ...(fallback ? { fallback } : {}) })).catch(() => {});
    // The downtime is over. Only now: out of the real-time class, this
    // thread may wait tens of ms for a CPU on a busy host, and the watch's
    // counters take an RCU grace period each to close.
    prio.restore();
    live?.earlyVmFlags?.close();
    opts.onEvent?.({ event: 'restored', pid: r.pid, dir: last, restoreUs: r.stats.restoreUs, path, ...(fallback ? { fallback } : {}), ...(r.warnings.length ? { warnings: r.warnings } : {}) });
    try {
      await ingest.flush();
      await ingest.durable();
      fsyncDir(root);
      if (path === 'live') opts.onEvent?.({ event: 'chain-durable', dir: last });
    } catch (err) {
      opts.onEvent?.({ event: 'warning', message: `the image chain in ${root} could not be made durable (${(err as Error).message}); the process runs` });
    }
  } catch (err) {
    const message = `restore failed: ${(err as Error).message}; the image stays in ${last} for tsnap restore`;
    await send(sock, encodeDoc(Msg.RestoreFailed, { message, dir: last })).catch(() => {});
    opts.onEvent?.({ event: 'restore-failed', message, dir: last });
  } finally {
    prio.restore();
    ingest.live?.earlyVmFlags?.close();
    sock.end();
  }
}

/** Receives one iteration into `dir`; returns what the live build did with it (for the event). */
async function receiveIteration(reader: FrameReader, dir: string, ingest: StreamIngest): Promise<Record<string, unknown>> {
  mkdirSync(dir, { mode: 0o700 });
  const files: string[] = [];
  for (;;) {
    const f = await reader.next();
    if (!f) throw new TsnapError('targetFailed', 'the sender disconnected in the middle of an iteration');
    if (f.type === Msg.IterEnd) break;
    if (f.type === Msg.Layout) { mark('serve: layout in'); await ingest.layout(dir, decodeDoc<LayoutDoc>(f)); mark('serve: layout applied'); continue; }
    if (f.type === Msg.PageChunk) { ingest.chunk(f.payload); await ingest.backpressure(); continue; }
    if (f.type !== Msg.FileBegin) throw new TsnapError('badImage', `expected FILE_BEGIN, got ${Msg[f.type] ?? f.type}`);
    const doc = decodeDoc<{ name?: unknown }>(f);
    const name = typeof doc?.name === 'string' ? doc.name : '';
    // An image file, a tree image's per-process file ("<pid>/<file>"), or its manifest.
    const m = /^(?:([1-9]\d{0,9})\/)?([a-z]+)$/.exec(name);
    if (!m || !(FILE_NAMES.has(m[2]) || (m[2] === 'tree' && !m[1]))) throw new TsnapError('badImage', `unexpected file ${quote(doc?.name)}`);
    if (ingest.streaming && name === 'pages') throw new TsnapError('badImage', 'a streamed iteration also sent a pages file');
    if (m[1]) mkdirSync(inside(dir, m[1]), { recursive: true, mode: 0o700 });
    const path = inside(dir, name);
    const fd = openSync(path, 'wx', 0o600);
    let length = 0;
    let crc = 0;
    try {
      for (;;) {
        const d = await reader.next();
        if (!d) throw new TsnapError('targetFailed', `the sender disconnected in the middle of ${name}`);
        if (d.type === Msg.FileData) {
          let off = 0;
          try {
            while (off < d.payload.length) off += writeSync(fd, d.payload, off, d.payload.length - off);
          } catch (err) {
            throw withPath(err, path);
          }
          length += d.payload.length;
          crc = crc32(d.payload, crc);
          continue;
        }
        if (d.type !== Msg.FileEnd) throw new TsnapError('badImage', `expected FILE_DATA or FILE_END in ${name}`);
        const end = decodeDoc<{ length?: unknown; crc32?: unknown }>(d) ?? {};
        if (end.length !== length || end.crc32 !== crc) {
          throw new TsnapError('badImage', `${name}: received ${length} bytes (crc ${crc}), the sender sent ${quote(end.length)} (crc ${quote(end.crc32)})`);
        }
        // A streamed iteration's files are synced in the background (stream-ingest.ts).
        if (!ingest.streaming) fsyncSync(fd);
        break;
      }
    } finally {
      closeSync(fd);
    }
    files.push(name);
  }
  if (!files.includes('inventory') && !files.includes('tree')) throw new TsnapError('badImage', 'an iteration arrived without its inventory');
  mark('serve: files in');
  if (ingest.streaming) return ingest.endIteration(dir, files);
  for (const sub of new Set(files.filter((f) => f.includes('/')).map((f) => f.split('/')[0]))) fsyncDir(inside(dir, sub));
  fsyncDir(dir);
  return {};
}

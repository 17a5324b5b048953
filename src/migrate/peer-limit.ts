/**
 * The sender's silence limit (`migrate --peer-timeout`): a frozen source is
 * never held hostage by a receiver that stops answering without closing
 * (its host died, a partition, a stuck serve, a zero window). TCP keeps
 * such a connection open for ~15 minutes (unacknowledged data) or forever
 * (a zero window is probed forever; nothing outstanding and no keepalive).
 *
 * Progress is what the receiver does for us: bytes arriving from it, or
 * bytes of ours it acknowledges (the kernel's send queue, SIOCOUTQ,
 * shrinks), or bytes leaving the user-space queues for the kernel (the
 * socket's buffered length, libuv's write queue). So a slow link whose
 * window moves is progress; a zero window that does not move is not. The
 * kernel's queue is what makes a slow link count: it lets a writer in
 * only once a third or so of a (up to 4 MiB) send buffer is free, and at
 * 300 KB/s libuv's queue then stood still for ~6 s while acknowledgements
 * came every 50 ms. A TLS socket's handle gives the TCP socket's fd too
 * (Node 20); without an fd only the user-space queues count. Time in which we wait for nothing (the
 * dump copying or building state) is not the receiver's silence.
 *
 * Two phases, split at the instant the receiver could have committed:
 *  - before that instant (`guard()` until COMMIT is wholly in the kernel),
 *    silence for the limit makes the sender give up: the socket is
 *    destroyed, which ends whatever wait the sender is in with a failure,
 *    and `fired` says why; the sender releases the source as on any
 *    failure before the commit. COMMIT is the last frame sent, so while any
 *    byte of it is still in user space the receiver cannot have it whole;
 *  - after it (waiting for COMMITTED), the receiver may have committed:
 *    resuming could run the process twice and killing could lose it. The
 *    source stays frozen; after the limit one line says so and what the
 *    user can do; the wait goes on. TCP keepalive with short intervals
 *    (and TCP_USER_TIMEOUT for unacknowledged data) lets a dead host end
 *    it: the connection breaks, and the sender resumes the source (the
 *    choice, and its risk, in docs/migration.md).
 *
 * A signal (SIGINT/SIGTERM/SIGHUP) during a network wait ends it too: the
 * sender's waits do not poll the abort flag themselves.
 */
import type { Socket } from 'node:net';
import { TsnapError } from '../errors.js';
import { setsockopt, ioctlInt } from '../sys/index.js';

/** The default of `--peer-timeout`. */
export const PEER_TIMEOUT_MS = 10_000;

const IPPROTO_TCP = 6;
/** Bytes in the kernel's send queue, not yet acknowledged by the peer (linux/sockios.h). */
const SIOCOUTQ = 0x5411;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;
const TCP_USER_TIMEOUT = 18;
/** TCP_KEEPIDLE's largest value (seconds): a longer limit keeps alive at that. */
const MAX_KEEPIDLE = 32767;
/** Keepalive probes after the idle time before the connection counts as broken. */
const KEEP_PROBES = 3;

export interface PeerLimitOptions {
  /** 0: no limit (and no keepalive). */
  limitMs: number;
  /** How the receiver is named in messages ("10.0.0.2:7707"). */
  peer: string;
  pid: number;
  /** The sender's abort check (withAbortSignals); throws the interruption. */
  checkAbort: () => void;
  warn: (message: string) => void;
}

type Phase = 'off' | 'guard' | 'commit-sent' | 'may-have-committed' | 'stopped';

export class PeerLimit {
  /** Why the watch ended the connection (silence before the commit, or a signal), once it did. */
  fired: TsnapError | null = null;
  /** The silence warning after COMMIT was printed. */
  warned = false;
  private phase: Phase = 'off';
  private timer: NodeJS.Timeout | null = null;
  private lastMove = 0;
  private lastSig = '';
  private waitingRead = false;
  private readonly onData = () => { this.lastMove = Date.now(); };

  constructor(private readonly sock: Socket, private readonly o: PeerLimitOptions) {}

  /** From now on (the source about to freeze) a silent receiver is given up on. */
  guard(): void {
    if (this.phase !== 'off') return;
    this.phase = 'guard';
    const fd = (this.sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd === 'number' && fd >= 0) this.fd = fd;
    this.lastMove = Date.now();
    this.lastSig = this.signature();
    this.sock.on('data', this.onData);
    if (this.o.limitMs > 0) this.keepalive();
    // Signals are polled at this pace too: 100 ms at most.
    this.timer = setInterval(() => this.tick(), Math.max(10, Math.min(100, this.o.limitMs / 4 || 100)));
    this.timer.unref();
  }

  /** COMMIT has been written (it may still sit in user space: the watch sees when it leaves). */
  commitSent(): void {
    this.commitWritten = true;
    if (this.phase === 'guard') this.phase = 'commit-sent';
  }

  /** Around a wait for the receiver's answer: silence counts only while we wait (or write). */
  async waiting<T>(p: Promise<T>): Promise<T> {
    this.waitingRead = true;
    this.lastMove = Date.now();
    try {
      return await p;
    } finally {
      this.waitingRead = false;
    }
  }

  /**
   * The receiver answered (COMMITTED), or the migration ended: the watch
   * has nothing more to say, and what follows (post-copy's page service,
   * the wait for RESTORED) keeps the connection's usual TCP timeouts.
   */
  stop(): void {
    if (this.phase === 'stopped') return;
    this.phase = 'stopped';
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.sock.off('data', this.onData);
    if (this.fd !== null && !this.sock.destroyed) {
      try {
        this.sock.setKeepAlive(false);
        setsockopt(this.fd, IPPROTO_TCP, TCP_USER_TIMEOUT, 0, 'setsockopt(TCP_USER_TIMEOUT)');
      } catch { /* the socket is going */ }
    }
  }

  /**
   * COMMIT was written and may have reached the receiver whole (said
   * conservatively: only a give-up while some of it was still in user
   * space proves it did not).
   */
  get mayHaveCommitted(): boolean {
    return this.commitWritten && !this.gaveUpBeforeCommit;
  }

  private commitWritten = false;
  private gaveUpBeforeCommit = false;
  private fd: number | null = null;

  /** What is still ours to write, as the socket sees it: changes whenever the kernel takes bytes. */
  private signature(): string {
    const h = (this.sock as unknown as { _handle?: { writeQueueSize?: number } })._handle;
    let unacked = -1;
    if (this.fd !== null && !this.sock.destroyed) {
      try { unacked = ioctlInt(this.fd, SIOCOUTQ, 'ioctl(SIOCOUTQ)'); } catch { /* the user-space queues alone */ }
    }
    return `${this.sock.writableLength}/${h?.writeQueueSize ?? 0}/${unacked}`;
  }

  private tick(): void {
    if (this.phase === 'stopped' || this.phase === 'off') return;
    const now = Date.now();
    const writing = this.sock.writableLength > 0;
    if (this.phase === 'commit-sent' && !writing) {
      // Every byte of COMMIT is in the kernel: the receiver may get it and commit.
      this.phase = 'may-have-committed';
    }
    const sig = this.signature();
    if (sig !== this.lastSig) { this.lastSig = sig; this.lastMove = now; }
    const blocked = writing || this.waitingRead || this.phase === 'may-have-committed';
    if (!blocked) { this.lastMove = now; return; }
    try {
      this.o.checkAbort();
    } catch (err) {
      this.end(err as TsnapError);
      return;
    }
    if (!(this.o.limitMs > 0) || now - this.lastMove < this.o.limitMs) return;
    const secs = +(this.o.limitMs / 1000).toFixed(3);
    if (this.phase !== 'may-have-committed') {
      this.gaveUpBeforeCommit = true;
      this.end(new TsnapError('targetFailed', `the receiver at ${this.o.peer} made no progress for ${secs} s (--peer-timeout) while process ${this.o.pid} was frozen, before the commit; tsnap gave up on it`));
      return;
    }
    if (!this.warned) {
      this.warned = true;
      this.o.warn(`the receiver at ${this.o.peer} has not answered COMMIT for ${secs} s; process ${this.o.pid} stays frozen here (the receiver may have committed it: resuming could run it twice); check the receiver (its tsnap serve, the restored process); SIGINT or SIGTERM to this tsnap (pid ${process.pid}) resumes process ${this.o.pid}, which then runs twice if the receiver did commit; a dead receiver host breaks the connection within ~${Math.round(this.keepaliveMs() / 1000)} s (TCP keepalive) and the process resumes here`);
    }
  }

  private end(why: TsnapError): void {
    this.fired ??= why;
    this.sock.destroy();
  }

  /** Keepalive idle time plus its probes: how long a dead host takes to break an idle connection. */
  private keepaliveMs(): number {
    const idle = Math.min(MAX_KEEPIDLE, Math.max(1, Math.round(this.o.limitMs / 1000)));
    const intvl = Math.max(1, Math.round(idle / KEEP_PROBES));
    return (idle + intvl * KEEP_PROBES) * 1000;
  }

  /**
   * Short keepalive: the wait for COMMITTED has nothing outstanding once
   * COMMIT is acknowledged, and a dead host would then never be noticed.
   * TCP_USER_TIMEOUT bounds data left unacknowledged (retransmissions,
   * ~15 minutes otherwise) to the same time. Best effort: without an fd
   * only Node's keepalive idle is set.
   */
  private keepalive(): void {
    const idle = Math.min(MAX_KEEPIDLE, Math.max(1, Math.round(this.o.limitMs / 1000)));
    const intvl = Math.max(1, Math.round(idle / KEEP_PROBES));
    this.sock.setKeepAlive(true, idle * 1000);
    const fd = this.fd;
    if (fd === null) return;
    try {
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, intvl, 'setsockopt(TCP_KEEPINTVL)');
      setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, KEEP_PROBES, 'setsockopt(TCP_KEEPCNT)');
      setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, this.keepaliveMs(), 'setsockopt(TCP_USER_TIMEOUT)');
    } catch { /* keepalive with the system's intervals */ }
  }
}

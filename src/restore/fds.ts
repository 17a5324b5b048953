/**
 * File descriptors at their original numbers, each kind recreated by its
 * module in src/files. fds that shared one open file description at dump
 * (same `ofd`) are created once and duplicated. Pipes, ttys and sockets on
 * 0-2 that lead outside the process are its stdio: whatever tsnap restore
 * was given (its own by default, or --stdin/--stdout/--stderr files),
 * inherited from the helper.
 *
 * Order: every file in fd order of its open file description (pipes and
 * socket pairs once both ends are known), then what links files to each
 * other (epoll registrations name other fds by number), then owners and
 * leases (finishFiles). What each kind does is its module's, through the
 * table in files/fd-kinds.ts.
 */
import { listFds } from '../proc/index.js';
import { SYS, F_DUPFD_CLOEXEC, F_SETOWN_EX, F_SETSIG, F_SETLEASE, SOL_SOCKET, SO } from '../sys/index.js';
import { placeFds } from '../files/place.js';
import type { FdImage, SocketImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { TsnapError } from '../errors.js';
import { isReadEnd, restorePipe, pipeEndsPresent } from '../files/pipe.js';
import { connectUnixPeers } from '../files/unix.js';
import { finishSockets } from '../files/socket-state.js';
import { restoreSocketPair, lendsReusePort } from '../files/socket.js';
import { Ghosts } from '../files/ghost.js';
import { FD_KINDS, isInheritedStdio } from '../files/fd-kinds.js';
import type { RestoreContext } from '../files/kind.js';
import { withInflight, requeueInflight } from '../files/scm-rights.js';
import { makeDeadPidfds, isThreadPidfd, restorePidfd } from '../files/pidfd.js';
import { closeSync } from 'node:fs';
import { PtyRestorer } from '../files/tty.js';
import { RemoteBatch } from '../inject/remote-batch.js';

export { isInheritedStdio };

/** Refuses what restore cannot bring back, before anything is created: the same test as dump's. */
export function checkFds(fds: FdImage[]): void {
  for (const f of withInflight(fds)) {
    if (isInheritedStdio(f)) continue;
    const kind = FD_KINDS[f.kind];
    if (!kind.restorable(f)) throw new TsnapError('unsupported', `fd ${f.fd} is a ${f.kind} (${f.link}); restoring this kind of fd is not supported`);
    kind.preflight?.(f);
  }
}

/** fds grouped by open file description, in fd order of each group's first member. */
function byOfd(fds: FdImage[]): FdImage[][] {
  const groups = new Map<string, FdImage[]>();
  for (const f of [...fds].sort((a, b) => a.fd - b.fd)) {
    const key = f.ofd === undefined ? `fd${f.fd}` : `ofd${f.ofd}`;
    const g = groups.get(key);
    if (g) g.push(f); else groups.set(key, [f]);
  }
  return [...groups.values()];
}

/** Where an open file already exists in the restored tree: a process and its fd. */
interface Holder {
  pid: number;
  fd: number;
}

/**
 * Restores the fds of one process or of a whole tree. Processes are done in
 * tree order; an open file shared with a process done earlier (inherited
 * through fork, or the other end of a pipe) is taken from that process with
 * pidfd_getfd, run inside the importing process, instead of created again.
 */
export class FdRestorer {
  private readonly holders = new Map<number, Holder>();
  private readonly pipeOfds = new Map<number, { read: Set<number>; write: Set<number> }>();
  /** Socket pairs by the smaller inode of the two ends ("a"). */
  private readonly pairOfds = new Map<number, { a: Set<number>; b: Set<number> }>();
  private readonly queued = new Map<number, Buffer[]>();
  /** Socket pair ends by inode: options and names of an end another process holds. */
  private readonly sockets = new Map<number, SocketImage>();
  /** Which sockets of the image show each name (raw sockaddr, hex). */
  private readonly names = new Map<string, Set<string>>();
  /** "pid:fd" of the files this restore created whose kind links them to others afterwards (epoll). */
  private readonly linked = new Set<string>();
  private readonly contexts = new Map<number, RestoreContext>();
  /** What kinds keep for the whole restore (RestoreContext.state). */
  private readonly kindState = new Map<string, unknown>();

  /** Deleted files and directories made again; removed once every fd is open. */
  readonly ghosts: Ghosts;

  /** A dumped pid as restored (differs with --new-pid); set by the tree restore. */
  pidNow: (pid: number) => number = (pid) => pid;

  /** tsnap's own fds that the restored processes import (pidfds of dead processes). */
  private readonly local: number[] = [];
  /** "pid:fd" of the files this restore created whose kind has a last step (inotify watches). */
  private readonly lateOnes = new Set<string>();
  private readonly every: FdImage[];

  /** Pseudo-terminals, created once for the whole restore. */
  private readonly ptys: PtyRestorer;

  /**
   * `memfds`: memfds restore already recreated (they are mapped), by
   * "dev:ino"; `opts.tcpClose`: connections come back closed (restore
   * --tcp-close); `opts.ptys`: shared with the session setup (files/tty.ts).
   */
  constructor(all: FdImage[][], private readonly memfds: Map<string, Holder> = new Map(), private readonly warn?: (m: string) => void, private readonly opts: { tcpClose?: boolean; ptys?: PtyRestorer } = {}) {
    const every = all.flatMap(withInflight);
    this.every = every;
    this.ptys = opts.ptys ?? new PtyRestorer(all, Math.max(2, ...every.map((f) => f.fd)) + 1);
    this.ghosts = new Ghosts(every);
    for (const f of every) {
      const k = f.socket;
      if (k && k.local.length > 2) {
        const key = k.local.toString('hex');
        const users = this.names.get(key) ?? new Set<string>();
        users.add(k.ino !== undefined ? `ino${k.ino}` : `ofd${f.ofd ?? f.fd}`);
        this.names.set(key, users);
      }
      if (k?.state === 'pair' && f.ofd !== undefined) {
        const id = Math.min(k.ino!, k.peerIno!);
        const e = this.pairOfds.get(id) ?? { a: new Set<number>(), b: new Set<number>() };
        (k.ino === id ? e.a : e.b).add(f.ofd);
        this.pairOfds.set(id, e);
        if (k.queued?.length) this.queued.set(k.ino!, k.queued);
        this.sockets.set(k.ino!, k);
      }
      if (!f.pipe || f.ofd === undefined) continue;
      const e = this.pipeOfds.get(f.pipe.id) ?? { read: new Set<number>(), write: new Set<number>() };
      (isReadEnd(f) ? e.read : e.write).add(f.ofd);
      this.pipeOfds.set(f.pipe.id, e);
    }
  }

  /** Before phase 1: what tsnap makes itself for the processes to import. */
  async prepare(): Promise<void> {
    for (const [ofd, fd] of await makeDeadPidfds(this.every)) {
      this.local.push(fd);
      this.holders.set(ofd, { pid: process.pid, fd });
    }
  }

  /** Once every process imported what it needs (or the restore failed). */
  releaseLocal(): void {
    for (const fd of this.local.splice(0)) closeSync(fd);
  }

  /** Phase 1: every fd of the process, each made by its kind's module (files/fd-kinds.ts); pipes and socket pairs last. */
  createFiles(rt: RemoteTask, own: FdImage[]): void {
    const fds = withInflight(own);
    const floor = Math.max(2, ...fds.map((f) => f.fd)) + 1;
    const groups = byOfd(fds.filter((f) => !isInheritedStdio(f)));
    const pipes = new Map<number, FdImage[][]>();
    const pairs = new Map<number, FdImage[][]>();
    const pidfds = new Map<number, number>();
    let deferred = false;
    const c: RestoreContext = {
      rt,
      fds,
      floor,
      pidNow: (p) => this.pidNow(p),
      tcpClose: !!this.opts.tcpClose,
      warn: this.warn,
      state: <T>(key: string, make: () => T): T => {
        if (!this.kindState.has(key)) this.kindState.set(key, make());
        return this.kindState.get(key) as T;
      },
      ptys: this.ptys,
      ghostPath: (f) => this.ghosts.pathFor(f, this.warn),
      memfdAt: (f) => (f.file ? this.memfds.get(`${f.file.dev}:${f.file.ino}`) : undefined),
      defer: (what, id, g) => {
        const into = what === 'pipe' ? pipes : pairs;
        const l = into.get(id);
        if (l) l.push(g); else into.set(id, [g]);
        deferred = true;
      },
    };
    for (const g of groups) {
      const f = g[0];
      const held = f.ofd === undefined ? undefined : this.holders.get(f.ofd);
      if (held) {
        this.importFile(rt, held, g, floor, pidfds);
        continue;
      }
      if (isThreadPidfd(f)) continue; // createLate: its thread does not exist yet
      const kind = FD_KINDS[f.kind];
      deferred = false;
      kind.restore(c, g);
      if (deferred) continue;
      if (kind.link) this.linked.add(`${rt.pid}:${f.fd}`);
      if (kind.late) this.lateOnes.add(`${rt.pid}:${f.fd}`);
      // Other open files of this memfd (a child's open of /proc/PID/fd/N) reopen this one.
      if (f.kind === 'memfd' && f.file && !this.memfds.has(`${f.file.dev}:${f.file.ino}`)) this.memfds.set(`${f.file.dev}:${f.file.ino}`, { pid: rt.pid, fd: f.fd });
      if (f.ofd !== undefined) this.holders.set(f.ofd, { pid: rt.pid, fd: f.fd });
    }
    this.contexts.set(rt.pid, c);
    for (const [id, ends] of pipes) {
      const both = this.pipeOfds.get(id);
      if (!both || !pipeEndsPresent(both, ends[0][0].pipe!)) {
        throw new TsnapError('badImage', `pipe:[${id}] lacks one of its ends in the image`);
      }
      const at = restorePipe(rt, ends, floor);
      for (const ofd of both.read) this.holders.set(ofd, { pid: rt.pid, fd: at.read });
      for (const ofd of both.write) this.holders.set(ofd, { pid: rt.pid, fd: at.write });
    }
    for (const [id, ends] of pairs) {
      const both = this.pairOfds.get(id);
      if (!both || both.a.size === 0 || both.b.size === 0) throw new TsnapError('badImage', `socket pair socket:[${id}] lacks one of its ends in the image`);
      const at = restoreSocketPair(rt, ends, floor, id, (ino) => this.queued.get(ino) ?? [], (ino) => this.sockets.get(ino), (k) => this.names.get(k.local.toString('hex'))?.size === 1);
      for (const ofd of both.a) this.holders.set(ofd, { pid: rt.pid, fd: at.a });
      for (const ofd of both.b) this.holders.set(ofd, { pid: rt.pid, fd: at.b });
    }
  }

  private importFile(rt: RemoteTask, from: Holder, group: FdImage[], floor: number, pidfds: Map<number, number>): void {
    let pidfd = pidfds.get(from.pid);
    if (pidfd === undefined) {
      const low = Number(rt.sc.check(`pidfd_open(${from.pid})`, SYS.pidfd_open, from.pid, 0));
      // Kept for the next imports: above every number the image uses, or
      // placing an imported fd at its number would replace it.
      pidfd = Number(rt.sc.check(`fcntl(${low}, F_DUPFD_CLOEXEC)`, SYS.fcntl, low, F_DUPFD_CLOEXEC, floor));
      rt.close(low);
      pidfds.set(from.pid, pidfd);
    }
    const tmp = Number(rt.sc.check(`pidfd_getfd(${from.pid}, ${from.fd})`, SYS.pidfd_getfd, pidfd, from.fd, 0));
    placeFds(rt, [{ tmp, targets: group }], floor);
  }

  /** Phase 1b, once every process created its files: unix sockets connected by name connect again. */
  connectUnix(rt: RemoteTask, fds: FdImage[]): void {
    connectUnixPeers(rt, fds, (f) => f.ofd === undefined || this.holders.get(f.ofd)?.pid === rt.pid);
  }

  /** Phase 2: each epoll this process created registers what it watched. */
  registerEpolls(rt: RemoteTask, fds: FdImage[]): void {
    const c = this.contexts.get(rt.pid);
    for (const f of withInflight(fds)) {
      if (c && this.linked.has(`${rt.pid}:${f.fd}`)) FD_KINDS[f.kind].link!(c, f);
    }
  }

  /**
   * Last, once every thread and every other file of the tree exists: the
   * pidfds of threads (created, or imported from a process done before),
   * then each kind's last step for the files this process created
   * (inotify watches: restore's own work must not show in their queues).
   * `tidNow`: a dumped tid as it is now, or undefined when the image has no
   * such thread.
   */
  createLate(rt: RemoteTask, own: FdImage[], tidNow: (tid: number) => number | undefined): void {
    const fds = withInflight(own);
    const floor = Math.max(2, ...fds.map((f) => f.fd)) + 1;
    const pidfds = new Map<number, number>();
    for (const g of byOfd(fds.filter(isThreadPidfd))) {
      const f = g[0];
      const held = f.ofd === undefined ? undefined : this.holders.get(f.ofd);
      if (held) { this.importFile(rt, held, g, floor, pidfds); continue; }
      const tid = tidNow(f.pidfd!.pid);
      if (tid === undefined) throw new TsnapError('badImage', `fd ${f.fd}: a pidfd names thread ${f.pidfd!.pid}, which is not in the image`);
      restorePidfd(rt, g, floor, tid);
      if (f.ofd !== undefined) this.holders.set(f.ofd, { pid: rt.pid, fd: f.fd });
    }
    for (const fd of pidfds.values()) rt.close(fd);
    const c = this.contexts.get(rt.pid);
    for (const f of fds) {
      if (c && this.lateOnes.has(`${rt.pid}:${f.fd}`)) FD_KINDS[f.kind].late!(c, f);
    }
  }

  /**
   * Phase 2b, once every process has its files: messages in flight in its
   * unix sockets are queued again from their peer ends (`pidNow`: a dumped
   * pid as it is now, for the senders' credentials).
   */
  requeueInflight(rt: RemoteTask, fds: FdImage[], pidNow: (pid: number) => number = (p) => p): void {
    requeueInflight(rt, fds, (ino, peerIno) => {
      const e = this.pairOfds.get(Math.min(ino, peerIno));
      for (const ofd of (e && (ino < peerIno ? e.a : e.b)) ?? []) {
        const at = this.holders.get(ofd);
        if (at) return at;
      }
      return undefined;
    }, pidNow);
  }

  /** Phase 3, once every process took what it needs: whatever the process should not have goes. */
  closeOthers(rt: RemoteTask, fds: FdImage[]): void {
    const wanted = new Set(fds.map((f) => f.fd));
    // One list: each close alone is a remote syscall of two ptrace stops.
    const closes = new RemoteBatch(rt);
    for (const fd of listFds(rt.pid)) if (!wanted.has(fd)) closes.push(`close(${fd})`, SYS.close, [fd]);
    closes.flush();
  }
}

/**
 * What is set once every fd (and thread) of the image exists: the
 * F_SETOWN_EX / F_SETSIG of each open file that had them (`idNow`: a dumped
 * pid or tid as it is now), and SO_REUSEPORT of listeners back to what it
 * was (socket.ts lends it while they bind).
 */
export function finishFiles(rt: RemoteTask, fds: FdImage[], idNow: (id: number) => number): void {
  finishSockets(rt, fds);
  for (const f of fds) {
    if (f.socket && lendsReusePort(f.socket)) {
      rt.sc.check(`setsockopt(${f.fd}, SO_REUSEPORT, 0)`, SYS.setsockopt, f.fd, SOL_SOCKET, SO.REUSEPORT, rt.put(Buffer.alloc(4)), 4);
    }
  }
  for (const f of fds) {
    // Taken by the restored process itself: a lease belongs to its holder.
    if (f.lease !== undefined) rt.sc.check(`fcntl(${f.fd}, F_SETLEASE)`, SYS.fcntl, f.fd, F_SETLEASE, f.lease);
  }
  for (const f of fds) {
    const o = f.owner;
    if (!o || isInheritedStdio(f)) continue;
    if (o.pid !== 0) {
      const ex = Buffer.alloc(8);
      ex.writeInt32LE(o.type, 0);
      ex.writeInt32LE(idNow(o.pid), 4);
      rt.sc.check(`fcntl(${f.fd}, F_SETOWN_EX)`, SYS.fcntl, f.fd, F_SETOWN_EX, rt.put(ex));
    }
    if (o.signal !== 0) rt.sc.check(`fcntl(${f.fd}, F_SETSIG)`, SYS.fcntl, f.fd, F_SETSIG, o.signal);
  }
}

/**
 * Terminals: pseudo-terminal pairs whose master is in the dump, /dev/tty,
 * and each process's controlling terminal.
 *
 * A pty is one object with two ends: the master (/dev/ptmx) and its slave
 * (/dev/pts/N, opened any number of times). Dump reads its state through a
 * copy of the master (mode ioctls on a master act on the slave): termios,
 * locked termios, window size, lock, packet mode, and the bytes queued in
 * both directions. Restore opens /dev/ptmx until devpts hands out the same
 * index N (it gives the lowest free one), so /dev/pts/N is the same path as
 * before, sets that state again, opens the slaves, makes it the controlling
 * terminal of its session leader before the leader forks (members inherit
 * a controlling terminal at fork, there is no call to give them one), and
 * locks it again last.
 *
 * Queued bytes: the kernel has no way to read them without consuming them,
 * so dump reads them (frozen) and writes them straight back, with echo and
 * input/output processing switched off for the instant, so that the line
 * discipline sees the same bytes again and nothing is echoed twice. Restore
 * writes them the same way. A slave whose master was closed is hung up: it
 * comes back hung up (a fresh pair whose master is closed at once).
 *
 * A terminal outside the dump (a shell's) is not the process's own: on
 * 0-2 it is stdio (above 2, the same terminal as one of them is that
 * stdio again, as a shell keeps its terminal on fd 255), and the controlling terminal of a restored process is
 * tsnap restore's (it inherits it; a session leader takes restore's stdio
 * terminal if no other session holds it).
 */
import { closeSync, openSync, readSync, writeSync, statSync, constants as C } from 'node:fs';
import {
  pidfdOpen, pidfdGetfd, SysError, SYS, O_CLOEXEC, O_NOCTTY, O_NONBLOCK, O_CREAT, O_EXCL, O_TRUNC, F_DUPFD_CLOEXEC, F_GETFL, F_SETFL, fcntl,
  TTY_IOC, TERMIOS, TERMIOS2_SIZE, TERMIOS_SIZE, WINSIZE_SIZE, ioctlGet, ioctlSet, pollNow,
} from '../sys/index.js';
import { devMajor, devMinor, readStat, readFdInfo, type FdTarget, type FdInfo, type ProcStat } from '../proc/index.js';
import type { FdImage, TtyImage, PtyImage, ProcessImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { placeFds, SETFL_MASK } from './place.js';
import { TsnapError } from '../errors.js';
import type { FdKindModule } from './kind.js';

const O_PATH = 0o10000000;
const POLLIN = 0x1;
const POLLHUP = 0x10;
/** More than the kernel ever holds for one direction of a pty (4 KiB line buffer + 64 KiB of flip buffers). */
const MAX_QUEUED = 1 << 20;

// ---- device numbers ----

/** The pts index of a /dev/pts/N device number (majors 136..143, 2^20 minors each), or null. */
export function ptsIndex(rdev: number): number | null {
  const major = devMajor(rdev);
  if (major < 136 || major > 143) return null;
  return (major - 136) * (1 << 20) + devMinor(rdev);
}

const isAlias = (rdev: number, minor: number) => devMajor(rdev) === 5 && devMinor(rdev) === minor;
/** /dev/ptmx and /dev/pts/ptmx. */
const isPtmx = (rdev: number) => isAlias(rdev, 2);
/** /dev/tty: whatever the controlling terminal is. */
const isCttyAlias = (rdev: number) => isAlias(rdev, 0);

function ptsDev(): number | null {
  try { return statSync('/dev/pts').dev; } catch { return null; }
}

// ---- termios ----

function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(n, 0);
  return b;
}

function withFlags(termios: Buffer, clear: { iflag?: number; oflag?: number; lflag?: number }): Buffer {
  const t = Buffer.from(termios);
  t.writeUInt32LE((t.readUInt32LE(TERMIOS.IFLAG) & ~(clear.iflag ?? 0)) >>> 0, TERMIOS.IFLAG);
  t.writeUInt32LE((t.readUInt32LE(TERMIOS.OFLAG) & ~(clear.oflag ?? 0)) >>> 0, TERMIOS.OFLAG);
  t.writeUInt32LE((t.readUInt32LE(TERMIOS.LFLAG) & ~(clear.lflag ?? 0)) >>> 0, TERMIOS.LFLAG);
  return t;
}

/**
 * The slave's termios while queued bytes are written back: the line
 * discipline already echoed and translated them once. ICANON is kept (the
 * lines are cut again as they were) and IXON too: a master in packet mode
 * would report a change of it.
 */
function replayTermios(termios: Buffer): Buffer {
  return withFlags(termios, {
    iflag: TERMIOS.INLCR | TERMIOS.IGNCR | TERMIOS.ICRNL | TERMIOS.IUCLC | TERMIOS.ISTRIP,
    oflag: TERMIOS.OPOST,
    lflag: TERMIOS.ISIG | TERMIOS.ECHO | TERMIOS.ECHOE | TERMIOS.ECHOK | TERMIOS.ECHONL | TERMIOS.ECHOCTL | TERMIOS.ECHOPRT | TERMIOS.ECHOKE | TERMIOS.IEXTEN,
  });
}

/** Non-canonical, MIN 0 TIME 0: a read takes everything queued, a partial line included, and never waits. */
function drainTermios(termios: Buffer): Buffer {
  const t = withFlags(termios, { lflag: TERMIOS.ICANON });
  t[TERMIOS.CC + TERMIOS.VMIN] = 0;
  t[TERMIOS.CC + TERMIOS.VTIME] = 0;
  return t;
}

const sleepMs = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/**
 * Reads what `fd` has queued without waiting. poll() on a tty with nothing
 * readable first pushes the flip buffers still waiting for the line
 * discipline (n_tty_poll), so the loop ends only when the kernel holds
 * nothing more. `packet`: a master in packet mode puts a status byte before
 * each read's data.
 */
function drain(fd: number, packet: boolean): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  const buf = Buffer.alloc(65536 + 1);
  for (;;) {
    if (!(pollNow(fd, POLLIN) & POLLIN)) break;
    let n: number;
    try {
      n = readSync(fd, buf, 0, buf.length, null);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN' || code === 'EIO') break;
      throw err;
    }
    if (n === 0) break;
    const data = packet ? buf.subarray(1, n) : buf.subarray(0, n);
    parts.push(Buffer.from(data));
    total += data.length;
    if (total > MAX_QUEUED) throw new TsnapError('unsupported', `a pty holds more than ${MAX_QUEUED} queued bytes; tsnap cannot keep them`);
  }
  return Buffer.concat(parts);
}

/** Writes all of `data` to a tty fd (made non-blocking for the while by the caller), waiting for room a bounded time. */
function writeAllNow(fd: number, data: Buffer, what: string): void {
  let off = 0;
  for (let tries = 0; off < data.length; tries++) {
    try {
      off += writeSync(fd, data, off, data.length - off);
      continue;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
    }
    if (tries > 1000) throw new TsnapError('internal', `${what}: the terminal took only ${off} of ${data.length} queued bytes back`);
    sleepMs(1);
  }
}

/** Runs `fn` with O_NONBLOCK set on the open file behind `fd`, then puts its status flags back. */
function nonBlocking<T>(fd: number, fn: () => T): T {
  const flags = fcntl(fd, F_GETFL);
  if (!(flags & O_NONBLOCK)) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  try {
    return fn();
  } finally {
    if (!(flags & O_NONBLOCK)) fcntl(fd, F_SETFL, flags);
  }
}

/**
 * Bytes for the slave to read go in through the master. The line
 * discipline takes them asynchronously (a work item), so the termios is
 * put back only once the slave counts them: all of them without ICANON,
 * up to the last end of line with it (FIONREAD counts whole lines).
 */
function writeInput(master: number, slave: number, termios: Buffer, data: Buffer): void {
  ioctlSet(master, TTY_IOC.TCSETS2, replayTermios(termios), 'ioctl(TCSETS2)');
  try {
    nonBlocking(master, () => writeAllNow(master, data, 'pty input'));
    const canonical = (termios.readUInt32LE(TERMIOS.LFLAG) & TERMIOS.ICANON) !== 0;
    const eol = [0x0a, termios[TERMIOS.CC + 11], termios[TERMIOS.CC + 16]].filter((c) => c !== 0);
    let want = data.length;
    if (canonical) {
      want = 0;
      for (let i = data.length - 1; i >= 0; i--) if (eol.includes(data[i])) { want = i + 1; break; }
    }
    for (let i = 0; i < 1000; i++) {
      pollNow(slave, POLLIN);
      if (ioctlGet(slave, TTY_IOC.FIONREAD, 4, 'ioctl(FIONREAD)').readInt32LE(0) >= want) break;
      sleepMs(1);
    }
    // A partial line is not counted; it went with the lines before it.
    if (want < data.length) sleepMs(2);
  } finally {
    ioctlSet(master, TTY_IOC.TCSETS2, termios, 'ioctl(TCSETS2)');
  }
}

/** Bytes for the master to read go in through a slave, with output processing off (it ran when they were first written). */
function writeOutput(master: number, slave: number, termios: Buffer, data: Buffer): void {
  ioctlSet(master, TTY_IOC.TCSETS2, withFlags(termios, { oflag: TERMIOS.OPOST }), 'ioctl(TCSETS2)');
  try {
    nonBlocking(slave, () => writeAllNow(slave, data, 'pty output'));
  } finally {
    ioctlSet(master, TTY_IOC.TCSETS2, termios, 'ioctl(TCSETS2)');
  }
}

function openSlaveHere(index: number): number {
  return openSync(`/dev/pts/${index}`, C.O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
}

// ---- dump ----

/** Runs `fn` on tsnap's own copy of fd `fd` of the process behind `pidfd`. */
function withCopy<T>(pidfd: number, fd: number, fn: (copy: number) => T): T {
  const copy = pidfdGetfd(pidfd, fd);
  try {
    return fn(copy);
  } finally {
    closeSync(copy);
  }
}

/**
 * What one tty fd is: a master (its pts index from fdinfo), a slave
 * (hung up when its ioctls give EIO), /dev/tty, or undefined for any
 * other terminal (a console, a serial line), which only stdio can be.
 */
export function describeTty(pidfd: number, img: FdImage, t: FdTarget, info: FdInfo): TtyImage | undefined {
  if (img.flags & O_PATH) return undefined;
  if (isPtmx(t.rdev)) {
    const idx = info.extra['tty-index'];
    const index = idx !== undefined ? Number(idx)
      : withCopy(pidfd, img.fd, (c) => ioctlGet(c, TTY_IOC.TIOCGPTN, 4, 'ioctl(TIOCGPTN)').readUInt32LE(0));
    return { type: 'master', index };
  }
  if (isCttyAlias(t.rdev)) return { type: 'ctty', index: -1 };
  const pts = ptsIndex(t.rdev);
  // A console or a serial line: only ever stdio (on 0-2, or the same terminal as one of them).
  if (pts === null) return { type: 'slave', index: -1 };
  const index = pts;
  return withCopy(pidfd, img.fd, (c) => {
    try {
      ioctlGet(c, TTY_IOC.TCGETS2, TERMIOS2_SIZE, 'ioctl(TCGETS2)');
    } catch (err) {
      if (err instanceof SysError && err.code === 'EIO') return { type: 'slave', index, hungUp: true };
      throw err;
    }
    const exclusive = ioctlGet(c, TTY_IOC.TIOCGEXCL, 4, 'ioctl(TIOCGEXCL)').readInt32LE(0) !== 0;
    return { type: 'slave', index, ...(exclusive ? { exclusive } : {}) };
  });
}

/** The controlling terminal of a process, for its image (absent: none). */
export function describeCtty(stat: ProcStat): { ctty?: { rdev: number; fgPgid: number } } {
  return stat.ttyNr ? { ctty: { rdev: stat.ttyNr, fgPgid: Math.max(0, stat.tpgid) } } : {};
}

export interface SeenTty {
  pid: number;
  t: FdTarget;
  img: FdImage;
}

function readPty(master: number): Omit<PtyImage, 'input' | 'output'> {
  const get = (req: number, size: number, name: string) => ioctlGet(master, req, size, `ioctl(${name})`);
  const optInt = (req: number, name: string) => {
    try { return get(req, 4, name).readInt32LE(0); } catch (err) { if (err instanceof SysError && err.code === 'ENOTTY') return 0; throw err; }
  };
  const session = optInt(TTY_IOC.TIOCGSID, 'TIOCGSID');
  return {
    termios: get(TTY_IOC.TCGETS2, TERMIOS2_SIZE, 'TCGETS2'),
    lockedTermios: get(TTY_IOC.TIOCGLCKTRMIOS, TERMIOS_SIZE, 'TIOCGLCKTRMIOS'),
    winsize: get(TTY_IOC.TIOCGWINSZ, WINSIZE_SIZE, 'TIOCGWINSZ'),
    locked: get(TTY_IOC.TIOCGPTLCK, 4, 'TIOCGPTLCK').readInt32LE(0) !== 0,
    packet: get(TTY_IOC.TIOCGPKT, 4, 'TIOCGPKT').readInt32LE(0) !== 0,
    slaveClosed: (pollNow(master, POLLIN) & POLLHUP) !== 0,
    session,
    fgPgid: session ? Math.max(0, optInt(TTY_IOC.TIOCGPGRP, 'TIOCGPGRP')) : 0,
  };
}

/**
 * Reads the bytes queued in both directions and puts them straight back
 * (the process is frozen). A slave is needed for both: the process's own
 * (`slave`), or one tsnap opens when opening and closing it changes
 * nothing (every slave was already closed, and the pty is unlocked);
 * otherwise the bytes stay where they are and are not in the image.
 */
function readQueued(master: number, slave: number | null, index: number, pty: Omit<PtyImage, 'input' | 'output'>): { input: Buffer; output: Buffer } {
  const none = { input: Buffer.alloc(0), output: Buffer.alloc(0) };
  let s = slave;
  if (s === null) {
    if (!pty.slaveClosed || pty.locked) return none;
    s = openSlaveHere(index);
  }
  try {
    ioctlSet(master, TTY_IOC.TCSETS2, drainTermios(pty.termios), 'ioctl(TCSETS2)');
    let input: Buffer;
    try {
      input = drain(s, false);
    } finally {
      ioctlSet(master, TTY_IOC.TCSETS2, pty.termios, 'ioctl(TCSETS2)');
    }
    if (input.length) writeInput(master, s, pty.termios, input);
    const output = drain(master, pty.packet);
    if (output.length) writeOutput(master, s, pty.termios, output);
    return { input, output };
  } finally {
    if (s !== slave) closeSync(s);
  }
}

/**
 * The ttys of the dumped processes, seen together: a slave is restorable
 * when its master is in the dump (on 0-2 without it, it is stdio), the
 * state of each pair is read once and stored on its master fds, and every
 * controlling terminal that is a pty of the dump must belong to a session
 * whose leader is dumped too (only a leader can take one again). Refuses,
 * naming the fd or process, what restore could not bring back.
 */
export function describeTtys(seen: SeenTty[], pids: number[], withData: boolean): void {
  const ttys = seen.filter((s) => s.img.tty);
  const tree = pids.length > 1;
  const who = (s: SeenTty) => `fd ${s.img.fd}${tree ? ` of process ${s.pid}` : ''}`;
  const masters = new Map<number, SeenTty[]>();
  for (const s of ttys) {
    if (s.img.tty!.type !== 'master') continue;
    const l = masters.get(s.img.tty!.index) ?? [];
    l.push(s);
    masters.set(s.img.tty!.index, l);
  }
  const stats = new Map<number, ProcStat>();
  for (const pid of pids) {
    try { stats.set(pid, readStat(pid)); } catch { /* gone while checking a running tree */ }
  }
  const pts = ptsDev();
  for (const s of ttys) {
    const t = s.img.tty!;
    if (t.type === 'ctty') {
      if (!stats.get(s.pid)?.ttyNr) {
        throw new TsnapError('unsupported', `${who(s)} is /dev/tty, but process ${s.pid} has no controlling terminal any more; restore could not open it again`);
      }
      continue;
    }
    if (t.type !== 'slave') continue;
    // A slave whose master was closed has lost its /dev/pts node: its index may be another pty's now.
    const paired = t.index >= 0 && masters.has(t.index) && !(t.hungUp && s.t.deleted);
    if (paired && s.t.dev !== pts) {
      throw new TsnapError('unsupported', `${who(s)} is ${s.img.link} of another devpts instance than /dev/pts; tsnap restores ptys of /dev/pts only`);
    }
    if (t.hungUp && paired) {
      throw new TsnapError('unsupported', `${who(s)} is ${s.img.link}, hung up (vhangup) while its pty lives on; tsnap cannot hang up one fd of a live pty`);
    }
    // On 0-2 a terminal whose master is elsewhere is stdio, restore's own,
    // hung up or not (a daemon left on the pty of a closed ssh session).
    if (s.img.fd <= 2 && !paired) { delete s.img.tty; continue; }
    if (t.hungUp || paired) continue;
    // The terminal of its stdio, once more above 2 (a shell's fd 255): restore's stdio too.
    const std = seen.find((x) => x.pid === s.pid && x.img.fd <= 2 && x.t.kind === 'tty' && x.t.rdev === s.t.rdev);
    if (std) {
      s.img.tty = { type: 'stdio', index: std.img.fd, ...(std.img.ofd === s.img.ofd ? { dup: true } : {}) };
      continue;
    }
    const what = t.index >= 0 ? 'a terminal whose master is outside the dump' : 'a terminal that is not a pty';
    throw new TsnapError('unsupported', `${who(s)} is ${s.img.link}, ${what}; tsnap restores ptys whose master is dumped too, /dev/tty, and other terminals on stdin/stdout/stderr (or above 2, the terminal of one of them) only`);
  }
  for (const [pid, st] of stats) {
    const index = st.ttyNr ? ptsIndex(st.ttyNr) : null;
    if (index === null || !masters.has(index)) continue;
    const leader = stats.get(st.session);
    if (!leader || leader.ttyNr !== st.ttyNr) {
      throw new TsnapError('unsupported', `the controlling terminal of process ${pid} is /dev/pts/${index}, of session ${st.session}, whose leader is not in the dump; only a session leader can take a controlling terminal again (dump the session leader with --tree)`);
    }
  }
  const pidfds = new Map<number, number>();
  try {
    for (const [index, ends] of masters) {
      const first = ends[0];
      let pidfd = pidfds.get(first.pid);
      if (pidfd === undefined) {
        try {
          pidfd = pidfdOpen(first.pid);
        } catch (err) {
          if (!withData) continue; // checking a running tree: a process may just have gone
          throw err;
        }
        pidfds.set(first.pid, pidfd);
      }
      // A /dev/tty fd is an open file of the slave too, when the process's controlling terminal is this pty.
      const slaveEnd = ttys.find((s) => s.img.tty?.type === 'slave' && s.img.tty.index === index && !s.img.tty.hungUp)
        ?? ttys.find((s) => s.img.tty?.type === 'ctty' && ptsIndex(stats.get(s.pid)?.ttyNr ?? 0) === index);
      const pty = withCopy(pidfd, first.img.fd, (master): PtyImage => {
        const state = readPty(master);
        if (state.session && !(stats.get(state.session)?.session === state.session)) {
          throw new TsnapError('unsupported', `${who(first)} is the master of /dev/pts/${index}, the controlling terminal of session ${state.session}, whose leader is not in the dump; dump the session with --tree from its leader`);
        }
        if (!withData) return { ...state, input: Buffer.alloc(0), output: Buffer.alloc(0) };
        if (!slaveEnd) return { ...state, ...readQueued(master, null, index, state) };
        let spid = pidfds.get(slaveEnd.pid);
        if (spid === undefined) { spid = pidfdOpen(slaveEnd.pid); pidfds.set(slaveEnd.pid, spid); }
        return { ...state, ...withCopy(spid, slaveEnd.img.fd, (slave) => readQueued(master, slave, index, state)) };
      });
      for (const e of ends) e.img.tty!.pty = pty;
    }
  } finally {
    for (const fd of pidfds.values()) closeSync(fd);
  }
}

// ---- restore ----

/** open() flags that give a tty fd back as it was open, without taking it as controlling terminal. */
function reopenFlags(f: FdImage): number {
  return f.flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC) | O_NOCTTY;
}

/** Checked before anything is created. */
export function checkTty(f: FdImage): void {
  const t = f.tty!;
  if (t.type === 'master') {
    if (!t.pty) throw new TsnapError('badImage', `fd ${f.fd} is the master of /dev/pts/${t.index} without the state of its pty`);
    let taken = false;
    try { statSync(`/dev/pts/${t.index}`); taken = true; } catch { /* free */ }
    if (taken) {
      throw new TsnapError('restoreFailed', `fd ${f.fd} is the master of /dev/pts/${t.index}, and another pty has that index now; restore needs the same index (is the original process still running? dump without --leave-running, or stop it)`);
    }
  }
}

interface Holder {
  pid: number;
  fd: number;
}

function groupByOfd(fds: FdImage[]): FdImage[][] {
  const groups = new Map<string, FdImage[]>();
  for (const f of [...fds].sort((a, b) => a.fd - b.fd)) {
    const key = f.ofd === undefined ? `fd${f.fd}` : `ofd${f.ofd}`;
    groups.set(key, [...(groups.get(key) ?? []), f]);
  }
  return [...groups.values()];
}

/** A copy in tsnap of fd `fd` of a process being restored. */
function localCopy(pid: number, fd: number): number {
  const pidfd = pidfdOpen(pid);
  try {
    return pidfdGetfd(pidfd, fd);
  } finally {
    closeSync(pidfd);
  }
}

function remoteIoctl(rt: RemoteTask, fd: number, req: number, name: string, arg?: Buffer | number): void {
  const a = arg === undefined ? 0 : typeof arg === 'number' ? arg : rt.put(arg);
  rt.sc.check(`ioctl(${fd}, ${name})`, SYS.ioctl, fd, req, a);
}

/**
 * The ptys of one restore (a process or a tree): each is created once, by
 * the first process that needs it, and the others import its master.
 */
export class PtyRestorer {
  private readonly images = new Map<number, PtyImage>();
  private readonly live = new Map<number, Holder>();
  private readonly hungDone = new Set<string>();

  /** `floor`: above every fd number of every process, where a master waits until the fds are placed. */
  constructor(processes: FdImage[][], private readonly floor: number) {
    for (const fds of processes) {
      for (const f of fds) if (f.tty?.type === 'master' && f.tty.pty) this.images.set(f.tty.index, f.tty.pty);
    }
  }

  /** The pts index of the process's controlling terminal when that is a pty of the image, else null. */
  cttyPty(p: ProcessImage): number | null {
    const index = p.ctty ? ptsIndex(p.ctty.rdev) : null;
    return index !== null && this.images.has(index) ? index : null;
  }

  /**
   * For a session leader, right after setsid and before it forks: takes its
   * controlling terminal again, a pty of the image, or restore's own
   * terminal (the first of its fds 0-2 that is one, still restore's stdio
   * now) when it had one outside the dump.
   */
  takeCtty(rt: RemoteTask, p: ProcessImage, warn: (m: string) => void): void {
    if (!p.ctty || p.sid !== p.pid) return;
    const index = this.cttyPty(p);
    if (index === null) {
      this.takeRestoreTerminal(rt, p, warn);
      return;
    }
    this.ensure(rt, index);
    const s = rt.open(`/dev/pts/${index}`, C.O_RDWR | O_NOCTTY);
    try {
      remoteIoctl(rt, s, TTY_IOC.TIOCSCTTY, 'TIOCSCTTY', 0);
    } finally {
      rt.close(s);
    }
  }

  private takeRestoreTerminal(rt: RemoteTask, p: ProcessImage, warn: (m: string) => void): void {
    for (const fd of [0, 1, 2]) {
      let rdev: number;
      try {
        const st = statSync(`/proc/${rt.pid}/fd/${fd}`);
        if (!st.isCharacterDevice()) continue;
        rdev = st.rdev;
      } catch { continue; }
      const major = devMajor(rdev);
      if (!(major === 4 || major === 5 || ptsIndex(rdev) !== null)) continue;
      // Taken from tsnap restore's own session only when tsnap leads it (a
      // terminal that runs tsnap restore itself): never from a user's shell.
      const self = readStat(process.pid);
      const steal = self.session === process.pid && self.ttyNr === rdev ? 1 : 0;
      try {
        remoteIoctl(rt, fd, TTY_IOC.TIOCSCTTY, 'TIOCSCTTY', steal);
      } catch (err) {
        if (!(err instanceof SysError)) throw err;
        warn(`process ${p.pid} led a session with a controlling terminal; restore's terminal on fd ${fd} could not be its controlling terminal (${err.code}: another session holds it), so it has none now`);
      }
      return;
    }
    warn(`process ${p.pid} led a session with a controlling terminal; restore's stdin/stdout/stderr is no terminal, so it has none now`);
  }

  /** Where the master of pty `index` is, creating the pty in `rt` if it does not exist yet. */
  private ensure(rt: RemoteTask, index: number): Holder {
    const have = this.live.get(index);
    if (have) return have;
    const pty = this.images.get(index);
    if (!pty) throw new TsnapError('badImage', `/dev/pts/${index} is used without its master in the image`);
    const m = this.openIndex(rt, index);
    const hi = Number(rt.sc.check(`fcntl(${m}, F_DUPFD_CLOEXEC)`, SYS.fcntl, m, F_DUPFD_CLOEXEC, this.floor));
    rt.close(m);
    const master = localCopy(rt.pid, hi);
    try {
      ioctlSet(master, TTY_IOC.TIOCSPTLCK, int32(0), 'ioctl(TIOCSPTLCK)');
      if (pty.input.length || pty.output.length) {
        const slave = openSlaveHere(index);
        try {
          if (pty.output.length) writeOutput(master, slave, pty.termios, pty.output);
          if (pty.input.length) writeInput(master, slave, pty.termios, pty.input);
        } finally {
          closeSync(slave);
        }
      }
      ioctlSet(master, TTY_IOC.TCSETS2, pty.termios, 'ioctl(TCSETS2)');
      ioctlSet(master, TTY_IOC.TIOCSWINSZ, pty.winsize, 'ioctl(TIOCSWINSZ)');
      // Last: locked bits would keep the termios from being set.
      if (pty.lockedTermios.some((b) => b !== 0)) ioctlSet(master, TTY_IOC.TIOCSLCKTRMIOS, pty.lockedTermios, 'ioctl(TIOCSLCKTRMIOS)');
      if (pty.packet) ioctlSet(master, TTY_IOC.TIOCPKT, int32(1), 'ioctl(TIOCPKT)');
    } finally {
      closeSync(master);
    }
    const at = { pid: rt.pid, fd: hi };
    this.live.set(index, at);
    return at;
  }

  /**
   * Opens /dev/ptmx in the task until devpts gives index `index`: it hands
   * out the lowest free one, so the ptys below it are taken meanwhile (held
   * by tsnap, not by the task, then closed).
   */
  private openIndex(rt: RemoteTask, index: number): number {
    const below: number[] = [];
    try {
      for (;;) {
        const m = rt.open('/dev/ptmx', C.O_RDWR | O_NOCTTY);
        const got = Number(readFdInfo(rt.pid, m).extra['tty-index']);
        if (got === index) return m;
        if (!(got < index)) {
          rt.close(m);
          throw new TsnapError('restoreFailed', `/dev/pts/${index} is taken by another pty; restore needs the same index (is the original process still running?)`);
        }
        below.push(localCopy(rt.pid, m));
        rt.close(m);
      }
    } finally {
      for (const fd of below) closeSync(fd);
    }
  }

  /** Creates the open file of `group` (one open file description of a tty) in `rt` and places it. `fds`: all of the process's. */
  restore(rt: RemoteTask, group: FdImage[], floor: number, fds: FdImage[]): void {
    const f = group[0];
    const t = f.tty!;
    if (t.type === 'slave' && t.hungUp) {
      this.restoreHungUp(rt, t.index, floor, fds);
      return;
    }
    let tmp: number;
    if (t.type === 'stdio') {
      // fds 0-2 are still restore's stdio here (they are never replaced).
      tmp = t.dup ? Number(rt.sc.check(`fcntl(${t.index}, F_DUPFD_CLOEXEC)`, SYS.fcntl, t.index, F_DUPFD_CLOEXEC, floor))
        : rt.open(`/proc/self/fd/${t.index}`, reopenFlags(f));
    } else if (t.type === 'ctty') {
      try {
        tmp = rt.open('/dev/tty', reopenFlags(f));
      } catch (err) {
        if (err instanceof SysError && err.code === 'ENXIO') {
          throw new TsnapError('restoreFailed', `fd ${f.fd} is /dev/tty, and the restored process has no controlling terminal (run tsnap restore from a terminal, or dump the pty it had with it)`);
        }
        throw err;
      }
    } else {
      const at = this.ensure(rt, t.index);
      if (t.type === 'master') {
        tmp = at.pid === rt.pid ? Number(rt.sc.check(`fcntl(${at.fd}, F_DUPFD_CLOEXEC)`, SYS.fcntl, at.fd, F_DUPFD_CLOEXEC, floor)) : this.importFrom(rt, at);
        const fl = f.flags & SETFL_MASK;
        if (fl) rt.sc.check('fcntl(F_SETFL)', SYS.fcntl, tmp, F_SETFL, fl);
      } else {
        tmp = rt.open(`/dev/pts/${t.index}`, reopenFlags(f));
      }
    }
    placeFds(rt, [{ tmp, targets: group }], floor);
  }

  private importFrom(rt: RemoteTask, from: Holder): number {
    const pidfd = Number(rt.sc.check(`pidfd_open(${from.pid})`, SYS.pidfd_open, from.pid, 0));
    try {
      return Number(rt.sc.check(`pidfd_getfd(${from.pid}, ${from.fd})`, SYS.pidfd_getfd, pidfd, from.fd, 0));
    } finally {
      rt.close(pidfd);
    }
  }

  /**
   * Every hung-up slave of one former pty in this process: slaves of a
   * fresh pair (any index), whose master is then closed, which hangs them up.
   */
  private restoreHungUp(rt: RemoteTask, index: number, floor: number, fds: FdImage[]): void {
    const key = `${rt.pid}:${index}`;
    if (this.hungDone.has(key)) return;
    this.hungDone.add(key);
    const low = rt.open('/dev/ptmx', C.O_RDWR | O_NOCTTY);
    const m = Number(rt.sc.check(`fcntl(${low}, F_DUPFD_CLOEXEC)`, SYS.fcntl, low, F_DUPFD_CLOEXEC, floor));
    rt.close(low);
    try {
      remoteIoctl(rt, m, TTY_IOC.TIOCSPTLCK, 'TIOCSPTLCK', int32(0));
      const groups = groupByOfd(fds.filter((x) => x.tty?.type === 'slave' && x.tty.hungUp && x.tty.index === index));
      const placements = groups.map((g) => ({
        tmp: Number(rt.sc.check(`ioctl(${m}, TIOCGPTPEER)`, SYS.ioctl, m, TTY_IOC.TIOCGPTPEER, reopenFlags(g[0]))),
        targets: g,
      }));
      placeFds(rt, placements, floor);
    } finally {
      rt.close(m);
    }
  }

  /**
   * Once every process has its fds: each session leader's terminal gets its
   * foreground group, and ptys that were locked (TIOCSPTLCK) or exclusive
   * (TIOCEXCL) become so again. `idNow`: a dumped pid as it is now.
   */
  finish(members: { rt: RemoteTask; p: ProcessImage }[], idNow: (id: number) => number, warn: (m: string) => void): void {
    for (const { rt, p } of members) {
      if (p.sid !== p.pid || !p.ctty || this.cttyPty(p) === null) continue;
      const fg = p.ctty.fgPgid;
      if (fg === 0 || fg === p.pgid) continue;
      const tty = rt.open('/dev/tty', C.O_RDWR | O_NOCTTY);
      try {
        remoteIoctl(rt, tty, TTY_IOC.TIOCSPGRP, 'TIOCSPGRP', int32(idNow(fg)));
      } catch (err) {
        if (!(err instanceof SysError)) throw err;
        warn(`the foreground group of the terminal of session ${p.sid} was ${fg}; it could not be set again (${err.code})`);
      } finally {
        rt.close(tty);
      }
    }
    const locked = new Set<number>();
    for (const { rt, p } of members) {
      for (const f of p.fds) {
        const t = f.tty;
        if (t?.type === 'master' && t.pty?.locked && !locked.has(t.index)) {
          locked.add(t.index);
          remoteIoctl(rt, f.fd, TTY_IOC.TIOCSPTLCK, 'TIOCSPTLCK', int32(1));
        }
        if (t?.type === 'slave' && t.exclusive) remoteIoctl(rt, f.fd, TTY_IOC.TIOCEXCL, 'TIOCEXCL');
      }
    }
  }
}

/** Self-check: what /proc shows of the restored process's terminals against its image. */
export function checkRestoredTtys(p: ProcessImage, pid: number, idNow: (id: number) => number, ptys: Set<number>): string[] {
  const out: string[] = [];
  const st = readStat(pid);
  const index = p.ctty ? ptsIndex(p.ctty.rdev) : null;
  if (p.ctty && index !== null && ptys.has(index)) {
    const have = st.ttyNr ? ptsIndex(st.ttyNr) : null;
    if (have !== index) out.push(`controlling terminal is ${have === null ? (st.ttyNr ? `device ${st.ttyNr}` : 'none') : `/dev/pts/${have}`}, the image's /dev/pts/${index}`);
    else if (p.ctty.fgPgid && st.tpgid !== idNow(p.ctty.fgPgid)) out.push(`foreground group of /dev/pts/${index} is ${st.tpgid}, the image's ${p.ctty.fgPgid}`);
  } else if (p.ctty && !st.ttyNr) {
    out.push('has no controlling terminal; the image\'s was outside the dump, and restore had none it could give');
  } else if (!p.ctty && st.ttyNr && (p.sid === p.pid || ptys.has(ptsIndex(st.ttyNr) ?? -1))) {
    // (A member of restore's session has restore's terminal, as a shell job; one of a pty of the image it did not have is wrong.)
    out.push(`controlling terminal is device ${st.ttyNr}, the image has none`);
  }
  const pidfd = pidfdOpen(pid);
  try {
    for (const f of p.fds) {
      const t = f.tty;
      if (!t) continue;
      if (t.type === 'master') {
        let got: string | undefined;
        try { got = readFdInfo(pid, f.fd).extra['tty-index']; } catch { continue; }
        if (got !== undefined && Number(got) !== t.index) out.push(`fd ${f.fd} is the master of /dev/pts/${got}, the image's /dev/pts/${t.index}`);
        else if (t.pty) withCopy(pidfd, f.fd, (c) => comparePty(c, f.fd, t.index, t.pty!, out));
      } else if (t.type === 'slave' && !t.hungUp) {
        let rdev: number;
        try { rdev = statSync(`/proc/${pid}/fd/${f.fd}`).rdev; } catch { continue; }
        if (ptsIndex(rdev) !== t.index) out.push(`fd ${f.fd} is pts ${ptsIndex(rdev)}, the image's /dev/pts/${t.index}`);
        const excl = withCopy(pidfd, f.fd, (c) => ioctlGet(c, TTY_IOC.TIOCGEXCL, 4, 'ioctl(TIOCGEXCL)').readInt32LE(0) !== 0);
        if (excl !== !!t.exclusive) out.push(`fd ${f.fd} (/dev/pts/${t.index}): exclusive mode ${excl ? 'on' : 'off'}, the image's ${t.exclusive ? 'on' : 'off'}`);
      }
    }
  } finally {
    closeSync(pidfd);
  }
  return out;
}

/** The state of a restored pty, read through its master, against the image's. */
function comparePty(master: number, fd: number, index: number, image: PtyImage, out: string[]): void {
  const have = readPty(master);
  const want = { ...image, termios: Buffer.from(image.termios), lockedTermios: Buffer.from(image.lockedTermios), winsize: Buffer.from(image.winsize) };
  const what = `fd ${fd} (master of /dev/pts/${index})`;
  if (!have.termios.equals(want.termios)) out.push(`${what}: termios ${have.termios.toString('hex')}, the image's ${want.termios.toString('hex')}`);
  if (!have.lockedTermios.equals(want.lockedTermios)) out.push(`${what}: locked termios differ from the image's`);
  if (!have.winsize.equals(want.winsize)) {
    const ws = (b: Buffer) => `${b.readUInt16LE(0)}x${b.readUInt16LE(2)}`;
    out.push(`${what}: window size ${ws(have.winsize)}, the image's ${ws(want.winsize)}`);
  }
  if (have.locked !== want.locked) out.push(`${what}: ${have.locked ? 'locked' : 'unlocked'}, the image's ${want.locked ? 'locked' : 'unlocked'}`);
  if (have.packet !== want.packet) out.push(`${what}: packet mode ${have.packet ? 'on' : 'off'}, the image's ${want.packet ? 'on' : 'off'}`);
}

/** The pts indexes the image restores (its masters). */
export function imagePtys(processes: ProcessImage[]): Set<number> {
  const s = new Set<number>();
  for (const p of processes) for (const f of p.fds) if (f.tty?.type === 'master') s.add(f.tty.index);
  return s;
}

/** The tty entry of the fd-kinds table (files/fd-kinds.ts). */
export const ttyKind: FdKindModule = {
  describe(c, img) {
    const tty = describeTty(c.pidfd, img, c.target, c.info);
    if (tty) img.tty = tty;
  },
  restorable: (img) => !!img.tty,
  refusalHint: ' (tsnap restores ptys whose master is dumped too, /dev/tty, and other terminals on stdin/stdout/stderr only)',
  preflight: (img) => checkTty(img),
  restore: (c, group) => c.ptys.restore(c.rt, group, c.floor, c.fds),
};

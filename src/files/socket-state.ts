/**
 * State of a socket that programs set once and count on afterwards, common
 * to the socket kinds: the shutdown state (shutdown(2): unix sockets and
 * UDP; TCP keeps its own in files/tcp.ts) and a classic BPF filter
 * (SO_ATTACH_FILTER). Read at dump from tsnap's copy of the socket and
 * sock_diag; set again once every fd of the restored process exists: after
 * the queues were put back (a unix receiver's filter would run on them
 * again, a shut-down end would refuse them) and the connections by name
 * were made.
 */
import { closeSync, statSync } from 'node:fs';
import {
  pidfdGetfd, pidfdOpen, getsockoptInt, setsockopt, getSocketFilter, attachSocketFilter, unixDiag, inetShutdowns, SysError,
  SOL_SOCKET, AF_UNIX, AF_INET, AF_INET6,
} from '../sys/index.js';
import type { FdImage, SocketImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { TsnapError } from '../errors.js';
import { checkUnixLink } from './unix.js';

const SYS_SHUTDOWN = 48;
const SOCK_DGRAM = 2;
const IPPROTO_UDP = 17;
const IPPROTO_UDPLITE = 136;
const SO_LOCK_FILTER = 44;
/** One classic BPF instruction: u16 code, u8 jt, u8 jf, u32 k. */
const INSN = 8;

/** Where the kernel keeps a shutdown state restore can set again. */
function hasShutdown(s: SocketImage): boolean {
  if (s.family === AF_UNIX) return true;
  return (s.family === AF_INET || s.family === AF_INET6) && s.type === SOCK_DGRAM && (s.protocol === IPPROTO_UDP || s.protocol === IPPROTO_UDPLITE || s.protocol === 0);
}

/** The classic filter attached to socket `copy`, or null; an eBPF one (SO_ATTACH_BPF) cannot be read back and is refused. */
function readFilter(copy: number, what: string): Buffer | null {
  try {
    return getSocketFilter(copy);
  } catch (err) {
    if (err instanceof SysError && err.code === 'EACCES') {
      throw new TsnapError('unsupported', `${what} has an eBPF socket filter (SO_ATTACH_BPF), which cannot be read back; tsnap restores classic BPF filters (SO_ATTACH_FILTER) only`);
    }
    throw err;
  }
}

/**
 * Adds the filter and, for unix sockets, the shutdown state to a socket's
 * image (UDP's: describeInetShutdowns). `ino`: the socket's inode
 * (sock_diag finds it by that).
 */
export function describeSocketState(pidfd: number, fd: number, s: SocketImage, ino: number): void {
  const what = `fd ${fd} (socket:[${ino}])`;
  const copy = pidfdGetfd(pidfd, fd);
  try {
    const filter = readFilter(copy, what);
    if (filter) {
      s.filter = Buffer.from(filter);
      if (getsockoptInt(copy, SOL_SOCKET, SO_LOCK_FILTER) !== 0) s.filterLocked = true;
    }
  } finally {
    closeSync(copy);
  }
  if (!hasShutdown(s) || s.family !== AF_UNIX) return; // UDP: describeInetShutdowns, one dump for all
  let how = 0;
  try {
    how = unixDiag(ino).shutdown;
  } catch (err) {
    // sock_diag answers for tsnap's network namespace only: a socket of another one has no state to read here.
    if (!(err instanceof SysError && err.code === 'ENOENT')) throw err;
  }
  if (how) s.shutdown = how;
}

/** UDP sockets' shutdown state by inode, one sock_diag dump per family and protocol, made when first asked. */
class InetShutdowns {
  private readonly maps = new Map<string, Map<number, number>>();
  of(s: SocketImage, ino: number): number | null {
    const key = `${s.family}/${s.protocol || IPPROTO_UDP}`;
    if (!this.maps.has(key)) this.maps.set(key, inetShutdowns(s.family, s.protocol || IPPROTO_UDP));
    return this.maps.get(key)!.get(ino) ?? null;
  }
}

/** The shutdown state of the UDP sockets among `fds` (their inode in `t.ino`), once every fd is read. */
export function describeInetShutdowns(fds: { t: { ino: number }; img: FdImage }[]): void {
  const all = new InetShutdowns();
  for (const { t, img } of fds) {
    const s = img.socket;
    if (!s || s.family === AF_UNIX || !hasShutdown(s)) continue;
    const how = all.of(s, t.ino);
    if (how) s.shutdown = how;
  }
}

/** shutdown(2)'s `how` for the kernel's sk_shutdown bits (1 receive, 2 send). */
const HOW = [-1, 0 /* SHUT_RD */, 1 /* SHUT_WR */, 2 /* SHUT_RDWR */];

/**
 * Sets filter and shutdown state again on the fds of `fds` the process
 * holds now (each at its number). Done for every fd of a socket: attaching
 * the same filter or shutting down the same direction twice changes nothing.
 */
export function finishSockets(rt: RemoteTask, fds: FdImage[]): void {
  let pidfd = -1;
  try {
    for (const f of fds) {
      const s = f.socket;
      if (!s) continue;
      if (s.filter?.length) {
        if (pidfd < 0) pidfd = pidfdOpen(rt.pid);
        attachFilter(pidfd, f.fd, s);
      }
      // A stream whose peer was closed got its shutdown from that close.
      if (s.shutdown && !(s.state === 'peer-closed' && s.type !== SOCK_DGRAM)) {
        const r = rt.sc.call(SYS_SHUTDOWN, f.fd, HOW[s.shutdown & 3]);
        // An unconnected UDP socket answers ENOTCONN but takes the state.
        if (r < 0n && !(Number(-r) === 107 && s.family !== AF_UNIX)) {
          throw new TsnapError('restoreFailed', `fd ${f.fd}: shutdown(${HOW[s.shutdown & 3]}) failed: ${new SysError('shutdown', Number(-r)).code}`);
        }
      }
    }
  } finally {
    if (pidfd >= 0) closeSync(pidfd);
  }
}

function attachFilter(pidfd: number, fd: number, s: SocketImage): void {
  const copy = pidfdGetfd(pidfd, fd);
  try {
    try {
      attachSocketFilter(copy, s.filter!);
      if (s.filterLocked) setsockopt(copy, SOL_SOCKET, SO_LOCK_FILTER, 1, 'setsockopt(SO_LOCK_FILTER)');
    } catch (err) {
      // A locked filter was attached through another fd of the same socket already.
      if (!(err instanceof SysError && err.code === 'EPERM' && s.filterLocked)) {
        throw new TsnapError('restoreFailed', `fd ${fd}: cannot attach its socket filter again: ${(err as Error).message}`, err);
      }
    }
  } finally {
    closeSync(copy);
  }
}

/**
 * Self-check: the filter and shutdown state of each restored socket, and
 * the connection and name of unix ones, as sock_diag and SO_GET_FILTER
 * show them. `fds`: those restore made (not inherited stdio).
 */
export function checkSockets(fds: FdImage[], pid: number): string[] {
  const inoOf = (fd: number): number | null => { try { return statSync(`/proc/${pid}/fd/${fd}`).ino; } catch { return null; } };
  const inet = new InetShutdowns();
  const out: string[] = [];
  const pidfd = pidfdOpen(pid);
  try {
    for (const f of fds) {
      try {
        checkSocket(f, pidfd, inoOf(f.fd), inet, out);
      } catch (err) {
        out.push(`fd ${f.fd} (${f.link}): cannot check the socket: ${(err as Error).message}`);
      }
    }
  } finally {
    closeSync(pidfd);
  }
  return out;
}

function checkSocket(f: FdImage, pidfd: number, ino: number | null, inet: InetShutdowns, out: string[]): void {
  const s = f.socket;
  if (!s) return;
  const copy = pidfdGetfd(pidfd, f.fd);
  try {
    const have = readFilter(copy, `fd ${f.fd}`);
    const want = s.filter?.length ? Buffer.from(s.filter) : null;
    if ((have === null) !== (want === null) || (have && want && !have.equals(want))) {
      out.push(`fd ${f.fd} (${f.link}): socket filter of ${have ? have.length / INSN : 0} instructions, the image's ${want ? want.length / INSN : 0}`);
    }
  } finally {
    closeSync(copy);
  }
  if (!hasShutdown(s) || ino === null) return;
  const d = s.family === AF_UNIX ? unixDiag(ino) : null;
  const link = d && checkUnixLink(f, d);
  if (link) out.push(link);
  const how = d ? d.shutdown : inet.of(s, ino);
  if ((how ?? 0) !== (s.shutdown ?? 0)) out.push(`fd ${f.fd} (${f.link}): shutdown state ${how ?? 0}, the image's ${s.shutdown ?? 0}`);
}

/**
 * TCP sockets in state CLOSE that are not fresh: a connection that ended
 * (both sides shut down, or reset) while the program kept its fd, or a
 * socket the program shut down before any connection. What a program can
 * still observe of them is their shutdown state (read gives 0 instead of
 * ENOTCONN) and whether they hold a port; restore makes a socket with the
 * same: bound only if the original still held its port, then shut down.
 *
 * getsockname goes on naming the port of an ended connection even after
 * the kernel gave it back (an ephemeral port of a connect(), now held by
 * a TIME_WAIT entry); binding it again would fail with EADDRINUSE. Only
 * inet_diag tells which closed sockets still hold their port.
 */
import { closeSync, fstatSync, statSync } from 'node:fs';
import { tcpBoundInactive, pollNow, bindSocket, rawSyscall, ioctlRet, SYS, AF_INET, AF_INET6, O_CLOEXEC, SysError } from '../sys/index.js';

const POLLHUP = 0x10;
const POLLRDHUP = 0x2000;
/** SocketImage.shutdown bits, as the kernel's sk_shutdown. */
export const RCV_SHUTDOWN = 1;
export const SEND_SHUTDOWN = 2;

const known = new Map<number, boolean>();

/** Whether inet_diag lists bound closed sockets of `family` here: checked once on a probe socket. */
function diagTellsBound(family: number): boolean {
  const had = known.get(family);
  if (had !== undefined) return had;
  let ok = false;
  const s = rawSyscall('socket(probe)', SYS.socket, family, 1 | O_CLOEXEC, 6);
  try {
    const addr = Buffer.alloc(family === AF_INET ? 16 : 28);
    addr.writeUInt16LE(family, 0);
    if (family === AF_INET) addr.writeUInt32BE(0x7f000001, 4);
    else addr.writeUInt8(1, 23); // ::1
    bindSocket(s, addr);
    const inodes = tcpBoundInactive(family);
    ok = inodes !== null && inodes.has(fstatSync(s).ino);
  } catch {
    ok = false;
  } finally {
    closeSync(s);
  }
  known.set(family, ok);
  return ok;
}

/**
 * Of a closed TCP socket `s` (tsnap's copy; `ino` its inode): whether it
 * holds its port, and its shutdown bits. A socket whose port is named but
 * whose kernel cannot say is taken as bound (the old behaviour).
 */
export function describeClosedTcp(s: number, ino: number, family: number): { holdsPort: boolean; shutdown: number } {
  let holdsPort = true;
  // inet_diag answers for tsnap's own network namespace only.
  if ((family === AF_INET || family === AF_INET6) && inOurNetns(s) && diagTellsBound(family)) {
    holdsPort = tcpBoundInactive(family)?.has(ino) ?? true;
  }
  // A closed socket always polls HUP; RDHUP says its read side is shut.
  // The write side is not observable (a closed socket's write fails with
  // EPIPE either way): an ended connection had both shut, as the kernel does.
  const ev = pollNow(s, POLLHUP | POLLRDHUP);
  const shutdown = (ev & POLLRDHUP) ? RCV_SHUTDOWN | SEND_SHUTDOWN : 0;
  return { holdsPort, shutdown };
}

const SIOCGSKNS = 0x894c;

/** Whether socket `s` lives in tsnap's network namespace (SIOCGSKNS gives an fd of the socket's). */
function inOurNetns(s: number): boolean {
  let ns = -1;
  try {
    ns = ioctlRet(s, SIOCGSKNS);
    return fstatSync(ns).ino === statSync('/proc/self/ns/net').ino;
  } catch {
    return false;
  } finally {
    if (ns >= 0) closeSync(ns);
  }
}

/** shutdown() values for the SocketImage.shutdown bits (-1: none). */
export function shutdownHow(bits: number): number {
  if ((bits & RCV_SHUTDOWN) && (bits & SEND_SHUTDOWN)) return 2;
  if (bits & RCV_SHUTDOWN) return 0;
  if (bits & SEND_SHUTDOWN) return 1;
  return -1;
}

/** Errors a shutdown of a socket that has no connection gives while it still records the bits. */
export function harmlessShutdownError(err: unknown): boolean {
  return err instanceof SysError && err.code === 'ENOTCONN';
}

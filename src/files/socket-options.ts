/**
 * Socket options that a program sets and a restore must set again:
 * SO_KEEPALIVE, SO_BROADCAST, SO_OOBINLINE, SO_PRIORITY, SO_RCVLOWAT,
 * SO_LINGER, SO_PASSCRED (unix); IP(V6)_FREEBIND and _TRANSPARENT (a bind to an address not
 * on this host needs them before the bind), IP_TOS, IP_TTL, the IPv6 hop
 * limit; TCP_NODELAY and the keepalive timers. Read on tsnap's copy of the
 * socket at dump; set on the new socket at restore, before its bind.
 */
import { getsockoptBuf, SOL_SOCKET, AF_UNIX, AF_INET, AF_INET6, IPPROTO_IPV6 } from '../sys/index.js';
import type { SocketImage } from '../../formats/schema.js';

const SOCK_STREAM = 1;
const IPPROTO_IP = 0;
const IPPROTO_TCP = 6;
const SO_LINGER = 13;

/** [level, option] of the int options, per family and type. */
function intOptions(family: number, type: number): [number, number][] {
  const out: [number, number][] = [
    [SOL_SOCKET, 9], // SO_KEEPALIVE
    [SOL_SOCKET, 6], // SO_BROADCAST
    [SOL_SOCKET, 10], // SO_OOBINLINE
    [SOL_SOCKET, 12], // SO_PRIORITY
    [SOL_SOCKET, 18], // SO_RCVLOWAT
  ];
  if (family === AF_UNIX) out.push([SOL_SOCKET, 16]); // SO_PASSCRED: whether the program reads its senders' credentials
  if (family === AF_INET) out.push([IPPROTO_IP, 15], [IPPROTO_IP, 19], [IPPROTO_IP, 1], [IPPROTO_IP, 2]); // FREEBIND TRANSPARENT TOS TTL
  if (family === AF_INET6) out.push([IPPROTO_IPV6, 78], [IPPROTO_IPV6, 75], [IPPROTO_IPV6, 16]); // FREEBIND TRANSPARENT UNICAST_HOPS
  if ((family === AF_INET || family === AF_INET6) && type === SOCK_STREAM) {
    out.push([IPPROTO_TCP, 1], [IPPROTO_TCP, 4], [IPPROTO_TCP, 5], [IPPROTO_TCP, 6]); // NODELAY KEEPIDLE KEEPINTVL KEEPCNT
  }
  return out;
}

/** The options of socket `fd` (tsnap's copy), each [level, option, value bytes]. */
export function readSocketOptions(fd: number, family: number, type: number): NonNullable<SocketImage['options']> {
  const out: NonNullable<SocketImage['options']> = [];
  for (const [level, opt] of intOptions(family, type)) {
    try {
      out.push([level, opt, Buffer.from(getsockoptBuf(fd, level, opt, 4))]);
    } catch { /* not an option of this socket (kernel config): nothing to restore */ }
  }
  const linger = getsockoptBuf(fd, SOL_SOCKET, SO_LINGER, 8);
  if (linger.readInt32LE(0) !== 0) out.push([SOL_SOCKET, SO_LINGER, Buffer.from(linger)]);
  return out;
}

/** Sets them again through `set` (a remote setsockopt, or one on tsnap's copy). */
export function applySocketOptions(s: SocketImage, set: (level: number, opt: number, value: Buffer) => void): void {
  for (const [level, opt, value] of s.options ?? []) set(level, opt, value);
}

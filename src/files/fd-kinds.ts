/**
 * The table of fd kinds: for every kind the image format names, the module
 * that describes it at dump and recreates it at restore (src/files/kind.ts).
 * Dump (dump/fds.ts) and restore (restore/fds.ts) go through this table
 * only; the mapped type makes a kind without an entry a compile error.
 */
import type { FdImage, FdKindImage } from '../../formats/schema.js';
import { unsupportedKind, type FdKindModule } from './kind.js';
import { reopenedKind } from './regular.js';
import { pipeKind } from './pipe.js';
import { fifoKind, memfdKind } from './fifo-memfd.js';
import { socketKind } from './socket.js';
import { eventfdKind, timerfdKind, signalfdKind } from './anon-fds.js';
import { epollKind } from './epoll.js';
import { anonInodeKind, otherKind } from './anon-inode-kinds.js';

export const FD_KINDS: { readonly [K in FdKindImage]: FdKindModule } = {
  file: reopenedKind,
  dir: reopenedKind,
  devnull: reopenedKind,
  chardev: reopenedKind,
  fifo: fifoKind,
  memfd: memfdKind,
  pipe: pipeKind,
  socket: socketKind,
  eventfd: eventfdKind,
  timerfd: timerfdKind,
  signalfd: signalfdKind,
  epoll: epollKind,
  tty: unsupportedKind(' (supported on stdin/stdout/stderr only)'),
  blockdev: unsupportedKind(),
  anon_inode: anonInodeKind,
  other: otherKind,
};

export function kindOf(f: FdImage): FdKindModule {
  return FD_KINDS[f.kind];
}

const STDIO_KINDS = new Set<FdKindImage>(['tty', 'pipe', 'fifo', 'socket']);

/**
 * An fd on 0-2 that leads outside the process (a terminal, a pipe or
 * socket to whoever started it): not part of the image; restore gives the
 * process its own stdio (or --stdin/--stdout/--stderr) instead.
 */
export function isInheritedStdio(f: FdImage): boolean {
  return f.fd <= 2 && STDIO_KINDS.has(f.kind) && !f.pipe && !f.socket && !f.fifo;
}

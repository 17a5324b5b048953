/**
 * `tsnap release-locks`: an image that will not be restored gives up the
 * network lock of its TCP connections. A kill-mode dump with
 * --tcp-established leaves two DROP rules per connection, owned by the
 * image, that only its restore would remove (tcp-lock.ts); nothing else
 * ever does, since the peer might still be waiting for the restore.
 * Without them the peer's next segment meets a host with no socket and
 * gets a RST: the connection is over, on both sides.
 */
import { readImage } from '../image/image-reader.js';
import { processImageDirs } from '../image/process-dirs.js';
import type { FdImage } from '../../formats/schema.js';
import { unlockImageConnection, connOf, describeConn } from './tcp-lock.js';

export interface ReleasedLock {
  pid: number;
  fd: number;
  /** local <-> peer, as the dump saw it. */
  conn: string;
  /** Rules deleted: 0 when they were gone already (a restore ran, or someone deleted them). */
  rules: number;
}

/** Every locked connection of the image (a tree: of each process), its rules deleted. */
export function releaseImageLocks(dir: string): ReleasedLock[] {
  const out: ReleasedLock[] = [];
  for (const d of processImageDirs(dir)) {
    const p = readImage(d, { indexOnly: true }).process;
    if (!p) continue; // a pre-dump holds memory only: no connection
    for (const f of withFilesInFlight(p.fds)) {
      const t = f.socket?.tcp;
      if (!t?.lock) continue;
      out.push({ pid: p.pid, fd: f.fd, conn: describeConn(connOf(t.local, t.peer)), rules: unlockImageConnection(t.lock, t.local, t.peer) });
    }
  }
  return out;
}

function withFilesInFlight(fds: FdImage[]): FdImage[] {
  return fds.flatMap((f) => [f, ...withFilesInFlight(f.socket?.scm?.files ?? [])]);
}

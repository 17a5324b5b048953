/**
 * FIFOs deleted while open (a daemon's control FIFO unlinked once both
 * sides had it open, zdtm's fifo-ghost). Nothing can open such a FIFO by
 * name any more, but its buffer lives as long as one fd of it does. Dump
 * records its permission bits and owner beside the unread bytes (`fifo`).
 * Restore makes a FIFO again (at its old path when that is free, so the
 * restored fd reads "PATH (deleted)" as before), opens the first fd of it
 * there, puts the bytes back, and unlinks it at once; every other open file
 * of the same FIFO, in this process or another of the tree, is opened
 * through /proc/PID/fd/N of that first fd, which reaches the same FIFO
 * without a name. Nothing is left in the filesystem, whatever fails later.
 */
import { chmodSync, chownSync, existsSync, mkdtempSync, readlinkSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { tmpdir } from 'node:os';
import { mkfifo } from '../sys/index.js';
import type { FdImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { restoreFifo } from './fifo-memfd.js';

type FifoGhost = NonNullable<NonNullable<FdImage['fifo']>['ghost']>;

export function isFifoGhost(f: FdImage): boolean {
  return f.kind === 'fifo' && !!f.file?.deleted;
}

/** Mode and owner of the deleted FIFO behind fd N: stat through the magic link opens nothing. */
export function describeFifoGhost(pid: number, f: FdImage): FifoGhost {
  const st = statSync(`/proc/${pid}/fd/${f.fd}`);
  return { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
}

function isDirectory(path: string): boolean {
  try { return statSync(path).isDirectory(); } catch { return false; }
}

/** Where to make the FIFO again: its path, a free name beside it, or a directory of tsnap's own. */
function placeFor(f: FdImage, warn?: (m: string) => void): { path: string; ownDir: string | null } {
  const path = f.path!;
  if (!isDirectory(dirname(path))) {
    const dir = mkdtempSync(join(tmpdir(), 'tsnap-fifo-'));
    warn?.(`the directory of the FIFO ${path} (deleted) is gone; fd ${f.fd} holds a deleted FIFO made in ${dir} instead`);
    return { path: join(dir, basename(path)), ownDir: dir };
  }
  if (!existsSync(path)) return { path, ownDir: null };
  const other = mkdtempSync(`${path}.tsnap-`);
  rmdirSync(other);
  warn?.(`${path} (deleted) exists again; fd ${f.fd} holds a deleted FIFO named ${other} instead`);
  return { path: other, ownDir: null };
}

/** The deleted FIFOs restore made, by inode: where a restored fd of each is. */
export class FifoGhosts {
  private readonly at = new Map<string, { pid: number; fd: number }>();

  restore(rt: RemoteTask, group: FdImage[], floor: number, warn?: (m: string) => void): void {
    const f = group[0];
    const key = `${f.file!.dev}:${f.file!.ino}`;
    const held = this.at.get(key);
    if (held) {
      restoreFifo(rt, group, floor, `/proc/${held.pid}/fd/${held.fd}`);
      return;
    }
    const g = f.fifo!.ghost!;
    const { path, ownDir } = placeFor(f, warn);
    mkfifo(path, 0o600);
    try {
      chownSync(path, g.uid, g.gid);
      chmodSync(path, g.mode);
      restoreFifo(rt, group, floor, path);
    } finally {
      unlinkSync(path);
      if (ownDir) rmdirSync(ownDir);
    }
    this.at.set(key, { pid: rt.pid, fd: f.fd });
  }
}

/** Self-check: a deleted FIFO must be a deleted one in the restored process too. */
export function checkFifoGhost(pid: number, f: FdImage): string | null {
  if (!isFifoGhost(f)) return null;
  let link = '?';
  try { link = readlinkSync(`/proc/${pid}/fd/${f.fd}`); } catch { /* not open: reported elsewhere */ }
  return link.endsWith(' (deleted)') ? null : `fd ${f.fd} (${f.link}): the restored FIFO is ${link}, not a deleted one`;
}

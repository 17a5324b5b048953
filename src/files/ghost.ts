/**
 * Files and directories deleted while open ("ghosts": temp files unlinked
 * at once, sqlite's temp store, a removed working directory opened with
 * O_DIRECTORY). Their names are gone, so the dump stores what the inode
 * holds: a file's size, mode, owner and data extents (holes stay holes),
 * read through /proc/PID/fd. Restore makes the file again at its old path,
 * opens it for each fd as the program had it, and unlinks it once every fd
 * of the image is open: the process holds deleted files of the same name
 * and contents, as before.
 *
 * Contents are stored once per inode (the first fd of the image that has
 * it); other fds of the same inode point to it by dev/ino.
 */
import { closeSync, constants as C, existsSync, fchmodSync, fchownSync, fstatSync, ftruncateSync, futimesSync, mkdirSync, mkdtempSync, openSync, readSync, rmdirSync, statSync, unlinkSync, writeSync, chownSync, chmodSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { tmpdir } from 'node:os';
import { rawSyscall, Errno, SysError, SYS } from '../sys/index.js';
import type { FdImage, GhostImage } from '../../formats/schema.js';
import { TsnapError } from '../errors.js';

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
/** Ghost contents larger than this are refused (a dump is not a backup of /tmp). */
export const GHOST_LIMIT = 64 << 20;

const key = (f: FdImage) => `${f.file!.dev}:${f.file!.ino}`;

function isDirectory(path: string): boolean {
  try { return statSync(path).isDirectory(); } catch { return false; }
}

export function isGhost(f: FdImage): boolean {
  return (f.kind === 'file' || f.kind === 'dir') && !!f.file?.deleted;
}

/** Before the freeze: only the size matters (the contents are read frozen). */
export function checkGhost(f: FdImage, pid: number): void {
  if (f.kind === 'file' && f.file && f.file.size > GHOST_LIMIT) {
    throw new TsnapError('unsupported', `fd ${f.fd} of process ${pid} is ${f.path} (deleted), ${f.file.size} bytes; deleted files over ${GHOST_LIMIT >> 20} MiB are not stored in images`);
  }
  if (!existsSync(dirname(f.path!))) {
    throw new TsnapError('unsupported', `fd ${f.fd} of process ${pid} is ${f.path} (deleted) and its directory is gone too; restore could not make it again`);
  }
}

/** The inode behind a deleted fd, read frozen; `seen`: inodes already stored in this image. */
export function describeGhost(pid: number, f: FdImage, seen: Set<string>): GhostImage {
  const fd = openSync(`/proc/${pid}/fd/${f.fd}`, C.O_RDONLY);
  try {
    const st = fstatSync(fd);
    const base = { size: st.size, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, atimeMs: st.atimeMs, mtimeMs: st.mtimeMs };
    if (f.kind === 'dir' || seen.has(key(f))) return { ...base, extents: null };
    seen.add(key(f));
    if (st.size > GHOST_LIMIT) throw new TsnapError('unsupported', `fd ${f.fd} of process ${pid} is ${f.path} (deleted), ${st.size} bytes; deleted files over ${GHOST_LIMIT >> 20} MiB are not stored in images`);
    return { ...base, extents: readExtents(fd, st.size) };
  } finally {
    closeSync(fd);
  }
}

/** The data of a file, as (offset, bytes) runs between its holes. */
function readExtents(fd: number, size: number): { offset: number; data: Buffer }[] {
  const out: { offset: number; data: Buffer }[] = [];
  let pos = 0;
  while (pos < size) {
    let start: number;
    try {
      start = rawSyscall('lseek(SEEK_DATA)', SYS.lseek, fd, pos, SEEK_DATA);
    } catch (err) {
      if (err instanceof SysError && err.errno === Errno.ENXIO) break; // only a hole is left
      throw err;
    }
    const end = Math.min(size, rawSyscall('lseek(SEEK_HOLE)', SYS.lseek, fd, start, SEEK_HOLE));
    const data = Buffer.alloc(end - start);
    for (let got = 0; got < data.length;) {
      const n = readSync(fd, data, got, data.length - got, start + got);
      if (n === 0) break;
      got += n;
    }
    out.push({ offset: start, data });
    pos = end;
  }
  return out;
}

/**
 * The ghosts restore made, by inode: their paths, unlinked by removeAll()
 * once every fd of the image is open (or when the restore fails).
 */
export class Ghosts {
  /** `ours`: made in a directory of tsnap's own, removed with it. */
  private readonly made = new Map<string, { path: string; dir: boolean; ours: boolean }>();
  private readonly contents = new Map<string, GhostImage>();

  constructor(all: FdImage[]) {
    for (const f of all) if (isGhost(f) && f.ghost?.extents) this.contents.set(key(f), f.ghost);
  }

  /** The path to open for this deleted fd: made on first use. */
  pathFor(f: FdImage, warn?: (m: string) => void): string {
    const k = key(f);
    const have = this.made.get(k);
    if (have) return have.path;
    const g = f.ghost!;
    let path = f.path!;
    let dirIsOurs = false;
    if (!isDirectory(dirname(path))) {
      // Its directory is gone since the dump: a directory of ours instead
      // (removed with it), so the process is not lost for a name.
      const dir = mkdtempSync(join(tmpdir(), 'tsnap-ghost-'));
      dirIsOurs = true;
      warn?.(`the directory of ${f.path} (deleted) is gone; fd ${f.fd} holds a deleted file in ${dir} instead`);
      path = join(dir, basename(path));
    } else if (existsSync(path)) {
      // The name is taken again: same directory, another name (the restore check names it).
      path = mkdtempSync(`${path}.tsnap-`);
      rmdirSync(path);
      warn?.(`${f.path} (deleted) exists again; fd ${f.fd} holds a deleted file named ${path} instead`);
    }
    if (f.kind === 'dir') {
      mkdirSync(path, { mode: 0o700 });
      chownSync(path, g.uid, g.gid);
      chmodSync(path, g.mode);
      this.made.set(k, { path, dir: true, ours: dirIsOurs });
      return path;
    }
    const data = this.contents.get(k);
    if (!data) throw new TsnapError('badImage', `fd ${f.fd}: the contents of ${f.path} (deleted) are not in the image`);
    const fd = openSync(path, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o600);
    this.made.set(k, { path, dir: false, ours: dirIsOurs });
    try {
      ftruncateSync(fd, data.size);
      for (const e of data.extents!) writeSync(fd, e.data, 0, e.data.length, e.offset);
      fchownSync(fd, data.uid, data.gid);
      fchmodSync(fd, data.mode);
      if (data.mtimeMs !== undefined) futimesSync(fd, (data.atimeMs ?? data.mtimeMs) / 1000, data.mtimeMs / 1000);
    } finally {
      closeSync(fd);
    }
    return path;
  }

  removeAll(): void {
    for (const m of this.made.values()) {
      try { if (m.dir) rmdirSync(m.path); else unlinkSync(m.path); } catch { /* gone already */ }
      if (m.ours) { try { rmdirSync(dirname(m.path)); } catch { /* not empty or gone */ } }
    }
    this.made.clear();
  }
}

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
import { closeSync, constants as C, existsSync, lstatSync, readdirSync, fchmodSync, fchownSync, fstatSync, ftruncateSync, futimesSync, mkdirSync, mkdtempSync, openSync, readSync, rmdirSync, statSync, unlinkSync, writeSync, chownSync, chmodSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { tmpdir } from 'node:os';
import { dataExtents } from '../sys/index.js';
import type { FdImage, GhostImage, MappedGhostImage } from '../../formats/schema.js';
import { TsnapError } from '../errors.js';


const key = (f: FdImage) => `${f.file!.dev}:${f.file!.ino}`;

/** mkdir of every missing directory down to `dir`, mode 0700; returns those made (outermost first), [] when one cannot be. */
function makeParents(dir: string): string[] {
  const missing: string[] = [];
  for (let d = dir; !existsSync(d); d = dirname(d)) missing.unshift(d);
  const made: string[] = [];
  try {
    for (const d of missing) { mkdirSync(d, { mode: 0o700 }); made.push(d); }
  } catch {
    for (const d of made.reverse()) { try { rmdirSync(d); } catch { /* leave it */ } }
    return [];
  }
  return made;
}

function isDirectory(path: string): boolean {
  try { return statSync(path).isDirectory(); } catch { return false; }
}

export function isGhost(f: FdImage): boolean {
  return (f.kind === 'file' || f.kind === 'dir') && !!f.file?.deleted;
}

/**
 * Ghost contents over this many bytes of data are refused unless the user
 * raises the limit (dump --ghost-limit): a dump is not a backup of /tmp.
 * Holes cost nothing, so the data extents count, not the apparent size.
 */
export const GHOST_LIMIT = 64 << 20;

/** The refusal for a ghost over the limit, one line, naming the way out; `what` names the file. */
export function overLimit(what: string, data: number, size: number, limit: number): TsnapError {
  const apparent = size !== data ? ` (${size} bytes with holes)` : '';
  return new TsnapError('unsupported', `${what}, which holds ${data} bytes of data${apparent}; deleted files over the ghost limit of ${fmtLimit(limit)} are not stored in images (raise it with --ghost-limit)`);
}

function fmtLimit(n: number): string {
  return n % (1 << 20) === 0 ? `${n >> 20} MiB` : `${n} bytes`;
}

/** Before the freeze: the data the inode holds must fit the limit (the contents are read frozen). */
export function checkGhost(f: FdImage, pid: number, limit = GHOST_LIMIT): void {
  if (f.kind === 'file') {
    const fd = openSync(`/proc/${pid}/fd/${f.fd}`, C.O_RDONLY);
    try {
      const what = `fd ${f.fd} of process ${pid} is ${f.path} (deleted)`;
      const st = fstatSync(fd);
      if (aliasOf(st, f.path!, what)) return;
      const data = dataBytes(fd, st.size);
      if (data > limit) throw overLimit(what, data, st.size, limit);
    } finally {
      closeSync(fd);
    }
  }
}

/**
 * A deleted name of an inode that still has other names (link, then
 * unlink): the same file must come back, not a copy that would part from
 * them. Another name in the same directory is found by a scan of it, and
 * restore opens that; one elsewhere cannot be found, and is refused.
 */
export function aliasOf(st: { nlink: number; dev: number; ino: number; isFile(): boolean }, path: string, what: string): string | null {
  if (st.nlink === 0 || !st.isFile()) return null;
  const dir = dirname(path);
  let names: string[] = [];
  try { names = readdirSync(dir); } catch { /* gone too: not found */ }
  for (const n of names) {
    const p = join(dir, n);
    try {
      const o = lstatSync(p);
      if (o.isFile() && o.dev === st.dev && o.ino === st.ino) return p;
    } catch { /* removed meanwhile */ }
  }
  throw new TsnapError('unsupported', `${what} but its inode has ${st.nlink} other name${st.nlink > 1 ? 's' : ''} outside ${dir}; restore could not open the same file again (a copy would part from them)`);
}

/** Before anything is made: each other name the image relies on is still that file. */
export function checkAliases(ghosts: readonly { alias?: string; ino: number; dev: number; what: string }[]): void {
  for (const g of ghosts) {
    if (!g.alias) continue;
    let st;
    try { st = statSync(g.alias); } catch { st = null; }
    if (!st || st.ino !== g.ino || st.dev !== g.dev) {
      throw new TsnapError('restoreFailed', `${g.what} was deleted but had another name, ${g.alias}, which ${st ? 'is another file now' : 'is gone'}; restore could not open the same file again`);
    }
  }
}

/** The inode behind a deleted fd, read frozen; `seen`: inodes already stored in this image. */
export function describeGhost(pid: number, f: FdImage, seen: Set<string>, limit = GHOST_LIMIT): GhostImage {
  const fd = openSync(`/proc/${pid}/fd/${f.fd}`, C.O_RDONLY);
  try {
    if (f.kind === 'dir' || seen.has(key(f))) return { ...inodeOf(fd), extents: null };
    const g = readGhost(fd, `fd ${f.fd} of process ${pid} is ${f.path} (deleted)`, f.path!, limit);
    if (g.extents) seen.add(key(f));
    return g;
  } finally {
    closeSync(fd);
  }
}

function inodeOf(fd: number): Omit<GhostImage, 'extents'> {
  const st = fstatSync(fd);
  return { size: st.size, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, atimeMs: st.atimeMs, mtimeMs: st.mtimeMs };
}

/** Inode and data of an open deleted file, refused over `limit` bytes of data. */
export function readGhost(fd: number, what: string, path: string, limit: number): GhostImage {
  const base = inodeOf(fd);
  const alias = aliasOf(fstatSync(fd), path, what);
  if (alias) return { ...base, extents: null, alias };
  const data = dataBytes(fd, base.size);
  if (data > limit) throw overLimit(what, data, base.size, limit);
  return { ...base, extents: readExtents(fd, base.size) };
}

/** (start, end) of each data extent of a file, holes skipped. */
function dataRuns(fd: number, size: number): [number, number][] {
  return dataExtents(fd, 0, size).map((e): [number, number] => [e.start, e.end]);
}

/** Bytes an image would store for this file: its data extents. */
export function dataBytes(fd: number, size: number): number {
  return dataRuns(fd, size).reduce((n, [s, e]) => n + (e - s), 0);
}

/** The data of a file, as (offset, bytes) runs between its holes. */
function readExtents(fd: number, size: number): { offset: number; data: Buffer }[] {
  return dataRuns(fd, size).map(([start, end]) => {
    const data = Buffer.alloc(end - start);
    for (let got = 0; got < data.length;) {
      const n = readSync(fd, data, got, data.length - got, start + got);
      if (n === 0) break;
      got += n;
    }
    return { offset: start, data };
  });
}

/**
 * The ghosts restore made, by inode: their paths, unlinked by removeAll()
 * once every fd of the image is open (or when the restore fails).
 */
export class Ghosts {
  /** `parents`: directories made for it (its own were deleted too), removed after it, innermost first. */
  private readonly made = new Map<string, { path: string; dir: boolean; parents: string[]; keep?: boolean }>();
  private readonly contents = new Map<string, GhostImage>();

  constructor(all: FdImage[]) {
    for (const f of all) if (isGhost(f) && (f.ghost?.extents || f.ghost?.alias)) this.contents.set(key(f), f.ghost);
  }

  /**
   * Deleted files the processes map (src/files/ghost-map.ts): one inode
   * mapped and open as an fd is one file again, whichever comes first.
   */
  addMapped(list: readonly MappedGhostImage[]): void {
    for (const m of list) if (!this.contents.has(`${m.dev}:${m.ino}`)) this.contents.set(`${m.dev}:${m.ino}`, m);
  }

  /** The path to open for this deleted fd: made on first use. */
  pathFor(f: FdImage, warn?: (m: string) => void): string {
    return this.make(key(f), f.path!, f.kind === 'dir', f.ghost!, `fd ${f.fd}`, warn);
  }

  /** The path to map a deleted file from: made on first use. */
  pathForMapping(m: { dev: number; ino: number; path: string }, at: number, warn?: (m: string) => void): string {
    const k = `${m.dev}:${m.ino}`;
    const g = this.contents.get(k);
    if (!g) throw new TsnapError('badImage', `the mapping at 0x${at.toString(16)}: the contents of ${m.path} (deleted) are not in the image`);
    return this.make(k, m.path, false, g, `the mapping at 0x${at.toString(16)}`, warn);
  }

  private make(k: string, wanted: string, isDir: boolean, g: GhostImage, what: string, warn?: (m: string) => void): string {
    const have = this.made.get(k);
    if (have) return have.path;
    const alias = isDir ? undefined : this.contents.get(k)?.alias;
    if (alias) {
      // Still named there: the very file (checkAliases made sure), left as it is.
      this.made.set(k, { path: alias, dir: false, parents: [], keep: true });
      return alias;
    }
    let path = wanted;
    let parents: string[] = [];
    if (!isDirectory(dirname(path))) {
      // Its directory was deleted too (rmdir of a tree with an fd open
      // inside): made again for the while, so the fd shows the same path.
      parents = makeParents(dirname(path));
      if (!parents.length || !isDirectory(dirname(path))) {
        // Not possible there (a file in the way, no permission): a directory of ours.
        const dir = mkdtempSync(join(tmpdir(), 'tsnap-ghost-'));
        parents = [dir];
        warn?.(`the directory of ${wanted} (deleted) is gone; ${what} holds a deleted file in ${dir} instead`);
        path = join(dir, basename(path));
      }
    } else if (existsSync(path)) {
      // The name is taken again: same directory, another name (the restore check names it).
      path = mkdtempSync(`${path}.tsnap-`);
      rmdirSync(path);
      warn?.(`${wanted} (deleted) exists again; ${what} holds a deleted file named ${path} instead`);
    }
    if (isDir) {
      mkdirSync(path, { mode: 0o700 });
      chownSync(path, g.uid, g.gid);
      chmodSync(path, g.mode);
      this.made.set(k, { path, dir: true, parents });
      return path;
    }
    const data = this.contents.get(k);
    if (!data) throw new TsnapError('badImage', `${what}: the contents of ${wanted} (deleted) are not in the image`);
    const fd = openSync(path, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o600);
    this.made.set(k, { path, dir: false, parents });
    try {
      ftruncateSync(fd, data.size);
      for (const e of data.extents!) {
        for (let at = 0; at < e.data.length;) at += writeSync(fd, e.data, at, e.data.length - at, e.offset + at);
      }
      fchownSync(fd, data.uid, data.gid);
      fchmodSync(fd, data.mode);
      if (data.mtimeMs !== undefined) futimesSync(fd, (data.atimeMs ?? data.mtimeMs) / 1000, data.mtimeMs / 1000);
    } finally {
      closeSync(fd);
    }
    return path;
  }

  removeAll(): void {
    // Innermost first: a ghost directory may be the parent made for another.
    const all = [...this.made.values()].sort((a, b) => b.path.length - a.path.length);
    for (const m of all) {
      if (m.keep) continue;
      try { if (m.dir) rmdirSync(m.path); else unlinkSync(m.path); } catch { /* gone already */ }
    }
    for (const d of all.flatMap((m) => m.parents).sort((a, b) => b.length - a.length)) {
      try { rmdirSync(d); } catch { /* not empty (another ghost in it) or gone */ }
    }
    this.made.clear();
  }
}

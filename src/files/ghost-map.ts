/**
 * Memory mapped from deleted files (a temp file mapped then unlinked, a
 * database's deleted scratch file). The file has no name for restore to
 * open, so the dump stores its inode and data as for a deleted fd
 * (ghost.ts), once per inode; restore makes the file again at its old
 * path, maps every VMA of it from there, and unlinks it with the fd ghosts
 * once every fd is open. Pages the process wrote into a private mapping
 * are anonymous memory and come from the page image as usual; shared
 * mappings see the file, which holds what they wrote.
 *
 * Deleted mappings that are not files of a directory tree are not ghosts:
 * memfds (fifo-memfd.ts), shared anonymous memory ("/dev/zero (deleted)"),
 * aio rings (aio.ts), SysV shm and hugetlb memory.
 */
import { closeSync, fstatSync, openSync, constants as C } from 'node:fs';
import type { Vma } from '../proc/maps.js';
import type { MappedGhostImage } from '../../formats/schema.js';
import { TsnapError } from '../errors.js';
import { isMemfdPath } from './fifo-memfd.js';
import { GHOST_LIMIT, aliasOf, dataBytes, overLimit, readGhost } from './ghost.js';

type MapLike = Pick<Vma, 'start' | 'end' | 'path' | 'deleted' | 'inode' | 'shared'>;

/** SysV shm segments show as "/SYSV<key>" on the kernel's internal shm mount. */
const SYSV = /^\/SYSV[0-9a-f]{8}$/;

/** A deleted mapping this module stores and makes again. */
export function isMappedGhost(v: MapLike): boolean {
  if (!v.deleted || v.inode === 0) return false;
  if (v.shared && v.path === '/dev/zero') return false;
  if (isMemfdPath(v.path) || v.path === '/[aio]' || SYSV.test(v.path) || v.path.startsWith('/anon_hugepage')) return false;
  return v.path.startsWith('/');
}

const hex = (n: number) => n.toString(16);
const mapFile = (pid: number, v: MapLike) => `/proc/${pid}/map_files/${hex(v.start)}-${hex(v.end)}`;

/**
 * Before the freeze: a deleted mapping must be a regular file within the
 * ghost limit, and not the executable (its exe link could not name it).
 * Throws the refusal, naming the mapping.
 */
export function checkMappedGhost(pid: number, v: MapLike, exe: string, limit = GHOST_LIMIT): void {
  const what = `process ${pid} maps ${v.path} (deleted) at 0x${hex(v.start)}`;
  if (exe === `${v.path} (deleted)`) {
    throw new TsnapError('unsupported', `${what}: its executable, deleted while it runs; restore could not set the executable link again`);
  }
  const fd = openSync(mapFile(pid, v), C.O_RDONLY);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new TsnapError('unsupported', `${what}, which is not a regular file; it cannot be made again`);
    if (aliasOf(st, v.path, what)) return;
    const data = dataBytes(fd, st.size);
    if (data > limit) throw overLimit(what, data, st.size, limit);
  } finally {
    closeSync(fd);
  }
}

/**
 * The deleted files a frozen process maps, each once by inode, with their
 * data (`ids(i)`: the identity of VMA i, as the image records it).
 */
export function readMappedGhosts(pid: number, vmas: readonly MapLike[], ids: (i: number) => { dev: number; ino: number } | null, limit = GHOST_LIMIT): MappedGhostImage[] {
  const out = new Map<string, MappedGhostImage>();
  vmas.forEach((v, i) => {
    if (!isMappedGhost(v)) return;
    const id = ids(i);
    if (!id) throw new TsnapError('unsupported', `process ${pid} maps ${v.path} (deleted) at 0x${hex(v.start)}, which cannot be read`);
    const key = `${id.dev}:${id.ino}`;
    if (out.has(key)) return;
    const fd = openSync(mapFile(pid, v), C.O_RDONLY);
    try {
      const g = readGhost(fd, `process ${pid} maps ${v.path} (deleted) at 0x${hex(v.start)}`, v.path, limit);
      out.set(key, { dev: id.dev, ino: id.ino, path: v.path, ...g, extents: g.extents ?? [] });
    } finally {
      closeSync(fd);
    }
  });
  return [...out.values()];
}

/** The restore side: the VMA maps a deleted file the image holds. */
export function mappedGhostOf(list: readonly MappedGhostImage[] | undefined, v: { file: { dev: number; ino: number; deleted: boolean } | null }): MappedGhostImage | null {
  const f = v.file;
  if (!f?.deleted) return null;
  return list?.find((g) => g.dev === f.dev && g.ino === f.ino) ?? null;
}

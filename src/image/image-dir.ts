/**
 * Image directories: created 0700 (images hold the process's secrets), files
 * 0600, and removed again when a dump fails so that a failed dump leaves
 * nothing that looks like an image.
 */
import { mkdirSync, readdirSync, chmodSync, statSync, rmSync, rmdirSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { join, dirname, resolve } from 'node:path';
import { TsnapError } from '../errors.js';
import { FILE_NAMES, PAGES_FILES } from '../../formats/schema.js';

export interface PreparedDir {
  path: string;
  created: boolean;
}

export function prepareImageDir(path: string): PreparedDir {
  let created = false;
  try {
    const st = statSync(path);
    if (!st.isDirectory()) throw new TsnapError('imageDir', `${path} exists and is not a directory; choose another --dir`);
    if (readdirSync(path).length > 0) {
      throw new TsnapError('imageDir', `${path} is not empty; choose a new or empty --dir (tsnap never overwrites an image)`);
    }
    chmodSync(path, 0o700);
  } catch (err) {
    if (err instanceof TsnapError) throw err;
    const e = err as NodeJS.ErrnoException;
    if (e.code !== 'ENOENT') throw dirError(`cannot use ${path}`, e);
    makeDirs(path);
    created = true;
  }
  return { path, created };
}

/**
 * mkdir -p, mode 0700, one level at a time: a recursive mkdirSync reports
 * ENOENT for a directory it could not create on a read-only file system,
 * which would send the user looking for a missing parent.
 */
export function makeDirs(path: string): void {
  const missing: string[] = [];
  for (let p = resolve(path); ; p = dirname(p)) {
    try {
      if (!statSync(p).isDirectory()) throw new TsnapError('imageDir', `cannot create ${path}: ${p} is not a directory; choose another --dir`);
      break;
    } catch (err) {
      if (err instanceof TsnapError) throw err;
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(p) === p) throw dirError(`cannot create ${path}`, err as NodeJS.ErrnoException);
      missing.unshift(p);
    }
  }
  for (const p of missing) {
    try {
      mkdirSync(p, { mode: 0o700 });
      chmodSync(p, 0o700);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw dirError(`cannot create ${path}`, err as NodeJS.ErrnoException);
    }
  }
}

function dirError(what: string, e: NodeJS.ErrnoException): TsnapError {
  switch (e.code) {
    case 'EROFS': return new TsnapError('imageDir', `${what}: read-only file system; choose a --dir on a writable one`, e);
    case 'ENOSPC': case 'EDQUOT': return new TsnapError('noSpace', `${what}: no space left on the device; free space or choose another --dir`, e);
    case 'EACCES': case 'EPERM': return new TsnapError('permission', `${what}: permission denied; choose a --dir you may write to`, e);
    case 'ENOTDIR': return new TsnapError('imageDir', `${what}: a part of the path is not a directory; choose another --dir`, e);
    default: return new TsnapError('imageDir', `${what}: ${e.code ?? e.message}`, e);
  }
}

/** Removes what a failed dump wrote: its own files, and the directory if it made it. */
export function discardImageDir(dir: PreparedDir): void {
  for (const name of new Set([...Object.values(FILE_NAMES), ...PAGES_FILES])) rmSync(join(dir.path, name), { force: true });
  if (dir.created) {
    try { rmdirSync(dir.path); } catch { /* not empty: keep what is not ours */ }
  }
}

export function fsyncDir(path: string): void {
  const fd = openSync(path, 'r');
  try { fsyncSync(fd); } finally { closeSync(fd); }
}

/**
 * Image directories: created 0700 (images hold the process's secrets), files
 * 0600, and removed again when a dump fails so that a failed dump leaves
 * nothing that looks like an image.
 */
import { mkdirSync, readdirSync, chmodSync, statSync, rmSync, rmdirSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { TsnapError } from '../errors.js';
import { FILE_NAMES } from '../../formats/schema.js';

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
    if (e.code !== 'ENOENT') throw new TsnapError(e.code === 'EACCES' ? 'permission' : 'imageDir', `cannot use ${path}: ${e.code}`);
    try {
      mkdirSync(path, { recursive: true, mode: 0o700 });
      chmodSync(path, 0o700);
      created = true;
    } catch (err2) {
      const e2 = err2 as NodeJS.ErrnoException;
      throw new TsnapError(e2.code === 'ENOSPC' ? 'noSpace' : e2.code === 'EACCES' ? 'permission' : 'imageDir', `cannot create ${path}: ${e2.code}`);
    }
  }
  return { path, created };
}

/** Removes what a failed dump wrote: its own files, and the directory if it made it. */
export function discardImageDir(dir: PreparedDir): void {
  for (const name of Object.values(FILE_NAMES)) rmSync(join(dir.path, name), { force: true });
  if (dir.created) {
    try { rmdirSync(dir.path); } catch { /* not empty: keep what is not ours */ }
  }
}

export function fsyncDir(path: string): void {
  const fd = openSync(path, 'r');
  try { fsyncSync(fd); } finally { closeSync(fd); }
}

/**
 * Shared readers for /proc/PID entries. Every failure leaves as a SysError so
 * callers can tell "process is gone" (ENOENT/ESRCH) from "not allowed" (EACCES,
 * EPERM) without knowing that Node's fs was used underneath.
 */
import * as fs from 'node:fs';
import { SysError } from '../sys/errors.js';

/** Converts an fs error; anything without an errno is not an OS failure and is rethrown untouched. */
export function procError(fallbackCall: string, path: string, err: unknown): unknown {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.errno === 'number') {
    // Node records whether open() or a later read() failed; a process can exit
    // between the two, and the log should say which one it was.
    const call = typeof e.syscall === 'string' && e.syscall !== '' ? e.syscall : fallbackCall;
    return new SysError(`${call}(${path})`, Math.abs(e.errno));
  }
  return err;
}

export function procPath(pid: number, name: string): string {
  return `/proc/${pid}/${name}`;
}

/**
 * readFileSync keeps reading until EOF, which procfs needs: these files report
 * st_size 0, so any size-based single read would come back empty.
 */
export function readProcBuffer(pid: number, name: string): Buffer {
  const path = procPath(pid, name);
  try {
    return fs.readFileSync(path);
  } catch (err) {
    throw procError('open', path, err);
  }
}

/**
 * One buffer for every procfs text read of this process. readFileSync
 * reads a file that reports st_size 0 in fresh 64 KiB buffers, one per
 * read(), and a seq_file answers each read() with a page or so: maps of
 * 10 000 VMAs (490 KB) came to 7.7 MB of buffers to collect per read.
 */
let textBuf: Buffer | null = Buffer.allocUnsafeSlow(64 << 10);
/** A buffer grown past this for one large file is not kept. */
const TEXT_BUF_KEEP = 4 << 20;

export function readProcText(pid: number, name: string): string {
  return readProcBytes(pid, name, (buf, len) => buf.toString('utf8', 0, len));
}

/**
 * The whole of /proc/PID/`name` in the shared buffer: `use(buf, len)` gets
 * it (valid only during the call; a nested read gets a buffer of its own).
 */
export function readProcBytes<T>(pid: number, name: string, use: (buf: Buffer, len: number) => T): T {
  const path = procPath(pid, name);
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch (err) {
    throw procError('open', path, err);
  }
  let buf = textBuf ?? Buffer.allocUnsafeSlow(64 << 10);
  textBuf = null;
  let len = 0;
  try {
    for (;;) {
      if (len === buf.length) {
        const bigger = Buffer.allocUnsafeSlow(buf.length * 2);
        buf.copy(bigger, 0, 0, len);
        buf = bigger;
      }
      const n = fs.readSync(fd, buf, len, buf.length - len, null);
      if (n === 0) break;
      len += n;
    }
  } catch (err) {
    textBuf ??= buf.length <= TEXT_BUF_KEEP ? buf : null;
    throw procError('read', path, err);
  } finally {
    fs.closeSync(fd);
  }
  try {
    return use(buf, len);
  } finally {
    if (buf.length <= TEXT_BUF_KEEP) textBuf ??= buf;
  }
}

export function readProcLink(pid: number, name: string): string {
  const path = procPath(pid, name);
  try {
    return fs.readlinkSync(path);
  } catch (err) {
    throw procError('readlink', path, err);
  }
}

/** Numeric directory entries (fd numbers, tids), sorted numerically rather than lexically. */
export function readProcNumericDir(pid: number, name: string): number[] {
  const path = procPath(pid, name);
  let entries: string[];
  try {
    entries = fs.readdirSync(path);
  } catch (err) {
    throw procError('opendir', path, err);
  }
  const out: number[] = [];
  for (const e of entries) {
    const n = Number(e);
    if (Number.isInteger(n)) out.push(n);
  }
  return out.sort((a, b) => a - b);
}

/**
 * d_path marks unlinked objects this way. A file whose real name ends in the
 * same text is indistinguishable here; callers that care must confirm with
 * st_nlink or by opening the object through /proc/PID/map_files or fd/.
 */
export const DELETED_SUFFIX = ' (deleted)';

/** Strips the marker d_path appends to unlinked objects. */
export function splitDeleted(p: string): { path: string; deleted: boolean } {
  if (p.endsWith(DELETED_SUFFIX)) return { path: p.slice(0, -DELETED_SUFFIX.length), deleted: true };
  return { path: p, deleted: false };
}

/**
 * Calls `fn(key, value)` for each "key: value" line of a /proc file
 * (status, fdinfo), with the blanks after the colon skipped. Lines
 * without a colon are ignored.
 */
export function forEachKeyValue(text: string, fn: (key: string, value: string) => void): void {
  let pos = 0;
  while (pos < text.length) {
    let eol = text.indexOf('\n', pos);
    if (eol < 0) eol = text.length;
    const colon = text.indexOf(':', pos);
    if (colon >= 0 && colon < eol) {
      let v = colon + 1;
      while (v < eol && (text.charCodeAt(v) === 9 || text.charCodeAt(v) === 32)) v++;
      fn(text.slice(pos, colon), text.slice(v, eol));
    }
    pos = eol + 1;
  }
}

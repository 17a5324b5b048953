/**
 * A whole file read on libuv's pool in one job (src/proc/tsnap-procread.c,
 * built to dist/native/libtsnap-procread.so): the read does not wait for
 * the main thread between its read() calls.
 */
import { existsSync, openSync, closeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { koffi } from './koffi.js';
import { SysError } from './errors.js';

interface ReadAll {
  async(fd: number, buf: Buffer, len: number, cb: (err: unknown, n: number) => void): void;
}

let fn: ReadAll | undefined;

function load(): ReadAll {
  if (fn) return fn;
  // dist/src/sys/ beside dist/native/; src/sys/ (the tests) two levels under it.
  const path = ['../../native/libtsnap-procread.so', '../../dist/native/libtsnap-procread.so'].map((rel) => fileURLToPath(new URL(rel, import.meta.url))).find(existsSync);
  if (!path) throw new SysError('load libtsnap-procread.so (not built: npm run build)', 2);
  fn = koffi.load(path).func('long tsnap_read_all(int fd, void *buf, size_t len)') as ReadAll;
  return fn;
}

/**
 * The file at `path` until EOF, into a buffer of `size` bytes grown as
 * needed (allocated unfilled: only what is read becomes resident). Its
 * buffer and the length read.
 */
export async function readWholeOnPool(path: string, size: number): Promise<{ buf: Buffer; len: number }> {
  const read = load();
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new SysError(`open(${path})`, Math.abs((err as NodeJS.ErrnoException).errno ?? 5));
  }
  try {
    let buf = Buffer.allocUnsafeSlow(size);
    let len = 0;
    for (;;) {
      const into = buf.subarray(len);
      const n = await new Promise<number>((resolve, reject) => read.async(fd, into, into.length, (err, r) => (err ? reject(err) : resolve(Number(r)))));
      if (n < 0) throw new SysError(`read(${path})`, -n);
      len += n;
      if (len < buf.length) return { buf, len };
      // Full: the rest follows from where the file stands.
      const bigger = Buffer.allocUnsafeSlow(buf.length * 2);
      buf.copy(bigger, 0, 0, len);
      buf = bigger;
    }
  } finally {
    closeSync(fd);
  }
}

/** VmFlags from /proc/PID/smaps: per-VMA flags that maps does not show. */
import { openSync, readSync, closeSync } from 'node:fs';
import { procError } from './read.js';
import { hexAt } from './num.js';
import { smapsMasks } from '../sys/proc-read.js';
import { SysError } from '../sys/errors.js';

const NEXT_VMFLAGS = '\nVmFlags:';

/**
 * VMA start -> VmFlags tokens ('rd', 'wr', 'gd', 'dd', 'uw', ...).
 * The kernel prints VmFlags as the last line of every area (show_smap, since
 * Linux 3.8), so the walk jumps from a header straight to the next VmFlags
 * line and takes the line after it as the next header, instead of looking
 * at the ~25 lines in between: a restore of 10 000 areas reads 7 MB here.
 */
export function parseVmFlags(text: string): Map<number, string[]> {
  const out = new Map<number, string[]>();
  const len = text.length;
  let pos = 0;
  while (pos < len) {
    const eol = text.indexOf('\n', pos);
    const dash = text.indexOf('-', pos);
    if (dash < 0 || (eol >= 0 && dash > eol)) throw new Error(`malformed smaps header: ${text.slice(pos, eol < 0 ? len : eol)}`);
    const start = hexAt(text, pos, dash);
    if (Number.isNaN(start)) throw new Error(`malformed smaps header: ${text.slice(pos, eol < 0 ? len : eol)}`);
    const at = text.indexOf(NEXT_VMFLAGS, pos);
    if (at < 0) break;
    let end = text.indexOf('\n', at + 1);
    if (end < 0) end = len;
    const line = text.slice(at + NEXT_VMFLAGS.length, end).trim();
    out.set(start, line === '' ? [] : line.split(/ +/));
    pos = end + 1;
  }
  return out;
}

/**
 * Costly: producing smaps makes the kernel walk every page table of the target
 * to compute Rss/Pss/Swap, so this is for small processes and tests. Dumps of
 * large processes should get what they need from maps plus pagemap.
 */
export function readVmFlags(pid: number): Map<number, string[]> {
  const out = new Map<number, string[]>();
  walkSmaps(pid, (start, buf, from, to) => {
    const tokens: string[] = [];
    for (let q = from; q < to;) {
      if (buf[q] === 32) { q++; continue; }
      let e = q;
      while (e < to && buf[e] !== 32) e++;
      tokens.push(e - q === 2 ? pairToken(buf[q], buf[q + 1]) : buf.toString('latin1', q, e));
      q = e;
    }
    out.set(start, tokens);
  });
  return out;
}

/** Each area of smaps, in address order: its start and which of the caller's tokens its VmFlags hold. */
export interface VmFlagsTable {
  count: number;
  starts: Float64Array;
  /** Bit i: the area has `tokens[i]` (readVmFlagMasks). */
  masks: Int32Array;
}

/** Two-letter token -> its bit + 1 (0: not asked for), per token list. */
const bitTables = new WeakMap<readonly string[], Int8Array>();

/**
 * The VmFlags of every area as bits of `tokens` (two-letter, at most 31):
 * what the restore's self-check compares, without a token array and a map
 * entry per area (10 000 areas: ~10 ms of CPU and as much garbage).
 */
export function readVmFlagMasks(pid: number, tokens: readonly string[], areasHint = 64): VmFlagsTable {
  const fast = readMasksNative(pid, tokens, areasHint);
  if (fast) return fast;
  const table = bitTable(tokens);
  let starts = new Float64Array(Math.max(16, areasHint + 8));
  let masks = new Int32Array(starts.length);
  let count = 0;
  walkSmaps(pid, (start, buf, from, to) => {
    let mask = 0;
    for (let q = from; q < to;) {
      if (buf[q] === 32) { q++; continue; }
      let e = q;
      while (e < to && buf[e] !== 32) e++;
      if (e - q === 2) {
        const b = table[(buf[q] << 8) | buf[q + 1]];
        if (b) mask |= 1 << (b - 1);
      }
      q = e;
    }
    if (count === starts.length) {
      const s2 = new Float64Array(count * 2);
      s2.set(starts);
      starts = s2;
      const m2 = new Int32Array(count * 2);
      m2.set(masks);
      masks = m2;
    }
    starts[count] = start;
    masks[count++] = mask;
  });
  return { count, starts, masks };
}

function bitTable(tokens: readonly string[]): Int8Array {
  let bits = bitTables.get(tokens);
  if (!bits) {
    if (tokens.length > 31) throw new RangeError('at most 31 tokens fit a mask');
    bits = new Int8Array(1 << 16);
    tokens.forEach((t, i) => {
      if (t.length !== 2) throw new RangeError(`${t}: VmFlags tokens are two letters`);
      bits![(t.charCodeAt(0) << 8) | t.charCodeAt(1)] = i + 1;
    });
    bitTables.set(tokens, bits);
  }
  return bits;
}

/** Room for the areas of a native read: the caller's hint and some (a full table is read again, larger). */
const roomFor = (hint: number) => Math.max(64, hint + (hint >> 2) + 64);

function openSmaps(pid: number): { fd: number; path: string } {
  const path = `/proc/${pid}/smaps`;
  try {
    return { fd: openSync(path, 'r'), path };
  } catch (err) {
    throw procError('open', path, err);
  }
}

/** Only the C parser's library missing (a checkout not built) sends every read to the JavaScript walk. */
let nativeMissing = false;

/**
 * readVmFlagMasks read and parsed in C (tsnap_smaps_masks): null when the
 * library is not built, or for text the C parser does not take (then
 * walkSmaps reads again and says what is wrong).
 */
function readMasksNative(pid: number, tokens: readonly string[], areasHint: number): VmFlagsTable | null {
  if (nativeMissing) return null;
  const table = bitTable(tokens);
  for (let room = roomFor(areasHint); ; room *= 4) {
    const starts = new Float64Array(room);
    const masks = new Int32Array(room);
    const { fd, path } = openSmaps(pid);
    const buf = walkBuf ?? Buffer.allocUnsafeSlow(WALK_BUF);
    walkBuf = null;
    let r;
    try {
      r = smapsMasks(fd, buf, table, starts, masks, path);
    } catch (err) {
      if (isNotBuilt(err)) { nativeMissing = true; return null; }
      throw err;
    } finally {
      closeSync(fd);
      walkBuf = buf;
    }
    if ('count' in r) return { count: r.count, starts, masks };
    if (r.retry === 'malformed') return null;
  }
}

/** proc-read.ts's error for a library that is not built (not a read's). */
const isNotBuilt = (err: unknown) => err instanceof SysError && err.call.startsWith('load ');

/**
 * One read buffer for every smaps walk of this process: a fresh buffer the
 * size of the file (7 MB for 10 000 areas) was page-faulted and zeroed anew
 * for each read. A walk keeps only the area being parsed.
 */
let walkBuf: Buffer | null = null;
const WALK_BUF = 256 << 10;

/**
 * /proc/PID/smaps area by area: `onArea(start, buf, from, to)` gets each
 * area's start and where the tokens of its VmFlags line lie in `buf`
 * (valid only during the call). The file is read into a fixed buffer and
 * parsed as it comes; what is left of an area at the buffer's end moves to
 * its start before the next read.
 */
export function walkSmaps(pid: number, onArea: (start: number, buf: Buffer, from: number, to: number) => void): void {
  const path = `/proc/${pid}/smaps`;
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw procError('open', path, err);
  }
  // Nested walks (none today) would share it: take it for the walk's length.
  let buf = walkBuf ?? Buffer.allocUnsafeSlow(WALK_BUF);
  walkBuf = null;
  try {
    let len = 0;
    let eof = false;
    while (!eof) {
      if (len === buf.length) {
        // One area larger than the buffer (paths are at most 4 KiB: never seen).
        const bigger = Buffer.allocUnsafeSlow(buf.length * 2);
        buf.copy(bigger, 0, 0, len);
        buf = bigger;
      }
      let n: number;
      try {
        n = readSync(fd, buf, len, buf.length - len, null);
      } catch (err) {
        throw procError('read', path, err);
      }
      if (n === 0) eof = true;
      len += n;
      const used = parseAreas(buf, len, eof, onArea);
      if (used > 0) {
        buf.copyWithin(0, used, len);
        len -= used;
      }
    }
  } finally {
    closeSync(fd);
    if (buf.length === WALK_BUF) walkBuf = buf;
  }
}

/**
 * Parses whole areas of buf[0, len) (an area ends with its VmFlags line);
 * returns the bytes they took. At `eof`, what is left must be a header
 * without VmFlags (tolerated, as parseVmFlags does) or nothing.
 */
function parseAreas(buf: Buffer, len: number, eof: boolean, onArea: (start: number, buf: Buffer, from: number, to: number) => void): number {
  const view = buf.subarray(0, len);
  let pos = 0;
  while (pos < len) {
    const at = view.indexOf(NEXT_VMFLAGS_BYTES, pos);
    const end = at < 0 ? -1 : view.indexOf(10, at + 1);
    if (end < 0 && !eof) return pos;
    const start = headerStart(buf, pos, len);
    if (at < 0) return len;
    const to = end < 0 ? len : end;
    onArea(start, buf, at + NEXT_VMFLAGS_BYTES.length, to);
    pos = to + 1;
  }
  return Math.min(pos, len);
}

/** The start address of the area whose header begins at `pos`. */
function headerStart(buf: Buffer, pos: number, len: number): number {
  let start = 0;
  let p = pos;
  for (; p < len; p++) {
    const c = buf[p];
    const d = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : -1;
    if (d < 0) break;
    start = start * 16 + d;
  }
  if (p === pos || p - pos > 16 || buf[p] !== 45 /* '-' */) {
    const eol = buf.indexOf(10, pos);
    throw new Error(`malformed smaps header: ${buf.toString('latin1', pos, Math.min(eol < 0 || eol > len ? len : eol, pos + 120))}`);
  }
  // Past 13 digits a double no longer accumulates exactly ([vsyscall]): round once.
  if (p - pos > 13) start = Number(BigInt(`0x${buf.toString('latin1', pos, p)}`));
  return start;
}

const NEXT_VMFLAGS_BYTES = Buffer.from(NEXT_VMFLAGS, 'latin1');

/** Two-letter tokens, made once each: 10 000 areas repeat the same few dozen. */
const pairs = new Map<number, string>();
function pairToken(a: number, b: number): string {
  const key = (a << 8) | b;
  let t = pairs.get(key);
  if (t === undefined) pairs.set(key, (t = String.fromCharCode(a, b)));
  return t;
}

/** Every area's VmFlags in buf[0, len): a whole smaps read at once (the pool's read, smaps-reader.ts). */
export function parseVmFlagsBuffer(buf: Buffer, len = buf.length): Map<number, string[]> {
  const out = new Map<number, string[]>();
  parseAreas(buf, len, true, (start, b, from, to) => {
    const tokens: string[] = [];
    for (let q = from; q < to;) {
      if (b[q] === 32) { q++; continue; }
      let e = q;
      while (e < to && b[e] !== 32) e++;
      tokens.push(e - q === 2 ? pairToken(b[q], b[q + 1]) : b.toString('latin1', q, e));
      q = e;
    }
    out.set(start, tokens);
  });
  return out;
}

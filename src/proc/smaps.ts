/** VmFlags from /proc/PID/smaps: per-VMA flags that maps does not show. */
import { readProcLarge } from './read.js';
import { hexAt } from './num.js';

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
export function readVmFlags(pid: number, areasHint = 64): Map<number, string[]> {
  const { buf, len } = readProcLarge(pid, 'smaps', areasHint * 1024);
  return parseVmFlagsBuffer(buf, len);
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

/** parseVmFlags over raw bytes (`len` of `buf`): no 7 MB string is ever built. */
export function parseVmFlagsBuffer(buf: Buffer, len = buf.length): Map<number, string[]> {
  const out = new Map<number, string[]>();
  let pos = 0;
  while (pos < len) {
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
    const at = buf.indexOf(NEXT_VMFLAGS_BYTES, pos);
    if (at < 0 || at >= len) break;
    let end = buf.indexOf(10, at + 1);
    if (end < 0 || end > len) end = len;
    const tokens: string[] = [];
    for (let q = at + NEXT_VMFLAGS_BYTES.length; q < end;) {
      if (buf[q] === 32) { q++; continue; }
      let e = q;
      while (e < end && buf[e] !== 32) e++;
      tokens.push(e - q === 2 ? pairToken(buf[q], buf[q + 1]) : buf.toString('latin1', q, e));
      q = e;
    }
    out.set(start, tokens);
    pos = end + 1;
  }
  return out;
}

/** /proc/PID/maps: the target's virtual memory areas. */
import { DELETED_SUFFIX, readProcBytes } from './read.js';
import { mapsParse } from '../sys/proc-read.js';
import { decAt, hexAt } from './num.js';

export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;

export interface Vma {
  /**
   * Addresses and offsets are plain numbers: x86-64 user space ends below 2^47.
   * The one mapping above 2^53 is [vsyscall] (0xffffffffff600000), which sits in
   * the kernel half, is never dumped, and happens to be exact as a double anyway
   * (its low 21 bits are zero). Any other value past 2^53 is rounded to nearest.
   */
  start: number;
  end: number;
  /** PROT_READ | PROT_WRITE | PROT_EXEC */
  prot: number;
  /** 's' in the flags column: MAP_SHARED (or a shared-memory object); otherwise private/COW. */
  shared: boolean;
  offset: number;
  devMajor: number;
  devMinor: number;
  inode: number;
  /**
   * '' for anonymous memory; pseudo names ('[heap]', '[stack]', '[vdso]',
   * '[anon:NAME]', ...) verbatim; file paths without the ' (deleted)' marker.
   * The kernel escapes only '\n' (as "\012") in paths and nothing else, so that
   * escape is left as is: undoing it would misread names that contain a literal
   * backslash sequence.
   */
  path: string;
  deleted: boolean;
}

export type SpecialVma = 'heap' | 'stack' | 'vdso' | 'vvar' | 'vvar_vclock' | 'vsyscall';

function malformed(text: string, from: number, to: number): Error {
  return new Error(`malformed /proc/PID/maps line: ${JSON.stringify(text.slice(from, to))}`);
}

/**
 * One line: "start-end perms offset major:minor inode   path". Fields are
 * located with indexOf bounded by the line end; the path is everything after
 * the padding, so spaces inside it survive.
 */
function parseLine(text: string, from: number, to: number): Vma {
  const dash = text.indexOf('-', from);
  if (dash < 0 || dash >= to) throw malformed(text, from, to);
  const sp1 = text.indexOf(' ', dash);
  if (sp1 < 0 || sp1 + 5 >= to) throw malformed(text, from, to);
  const start = hexAt(text, from, dash);
  const end = hexAt(text, dash + 1, sp1);

  const r = text.charCodeAt(sp1 + 1);
  const w = text.charCodeAt(sp1 + 2);
  const x = text.charCodeAt(sp1 + 3);
  const s = text.charCodeAt(sp1 + 4);
  const prot = (r === 114 ? PROT_READ : 0) | (w === 119 ? PROT_WRITE : 0) | (x === 120 ? PROT_EXEC : 0);
  const shared = s === 115;

  const offFrom = sp1 + 6;
  const sp3 = text.indexOf(' ', offFrom);
  if (sp3 < 0 || sp3 >= to) throw malformed(text, from, to);
  const offset = hexAt(text, offFrom, sp3);

  const colon = text.indexOf(':', sp3 + 1);
  if (colon < 0 || colon >= to) throw malformed(text, from, to);
  const sp4 = text.indexOf(' ', colon);
  if (sp4 < 0 || sp4 >= to) throw malformed(text, from, to);
  const devMajor = hexAt(text, sp3 + 1, colon);
  const devMinor = hexAt(text, colon + 1, sp4);

  // Anonymous lines may end right after the inode, with no trailing padding.
  let sp5 = text.indexOf(' ', sp4 + 1);
  if (sp5 < 0 || sp5 > to) sp5 = to;
  const inode = decAt(text, sp4 + 1, sp5);

  if (Number.isNaN(start + end + offset + devMajor + devMinor + inode)) throw malformed(text, from, to);

  let p = sp5;
  while (p < to && text.charCodeAt(p) === 32) p++;
  let path = p < to ? text.slice(p, to) : '';
  let deleted = false;
  if (path.endsWith(DELETED_SUFFIX)) {
    path = path.slice(0, -DELETED_SUFFIX.length);
    deleted = true;
  }
  return { start, end, prot, shared, offset, devMajor, devMinor, inode, path, deleted };
}

export function parseMaps(text: string): Vma[] {
  const out: Vma[] = [];
  const len = text.length;
  let pos = 0;
  while (pos < len) {
    let eol = text.indexOf('\n', pos);
    if (eol < 0) eol = len;
    if (eol > pos) out.push(parseLine(text, pos, eol));
    pos = eol + 1;
  }
  return out;
}

/**
 * The kernel builds this text one read() chunk at a time, so a running target
 * can change its mappings mid-read and yield a torn list; read it only while
 * the target is stopped.
 */
export function readMaps(pid: number): Vma[] {
  return readProcBytes(pid, 'maps', (buf, len) => parseMapsBytes(buf, len) ?? parseMaps(buf.toString('utf8', 0, len)));
}

/** tsnap_maps_parse's columns, kept between reads (a restore's check reads 10 000 lines). */
let nums = new Float64Array(0);
let info = new Int32Array(0);

/**
 * parseMaps over the bytes, the fields found in C (sys/proc-read.ts):
 * 10 000 lines in ~1 ms instead of ~4. Null for what only parseMaps
 * reads (it then names the bad line), or without the library.
 */
export function parseMapsBytes(buf: Buffer, len: number): Vma[] | null {
  // The shortest line, "0-0 ---p 0 0:0 0\n", is 17 bytes.
  const most = Math.floor(len / 17) + 1;
  if (info.length < 3 * most) {
    nums = new Float64Array(6 * most);
    info = new Int32Array(3 * most);
  }
  const n = mapsParse(buf, len, nums, info);
  if (n === null) return null;
  const out = new Array<Vma>(n);
  for (let i = 0; i < n; i++) {
    const d = 6 * i;
    const f = info[3 * i];
    const plen = info[3 * i + 2];
    out[i] = {
      start: nums[d], end: nums[d + 1], prot: f & 7, shared: (f & 8) !== 0, offset: nums[d + 2], devMajor: nums[d + 3], devMinor: nums[d + 4], inode: nums[d + 5],
      path: plen === 0 ? '' : buf.toString('utf8', info[3 * i + 1], info[3 * i + 1] + plen), deleted: (f & 16) !== 0,
    };
  }
  return out;
}

/** Kernel-provided areas that need special handling instead of a plain page copy. */
export function isSpecialVma(v: Vma): SpecialVma | null {
  switch (v.path) {
    case '[heap]':
      return 'heap';
    case '[stack]':
      return 'stack';
    case '[vdso]':
      return 'vdso';
    case '[vvar]':
      return 'vvar';
    case '[vvar_vclock]':
      return 'vvar_vclock';
    case '[vsyscall]':
      return 'vsyscall';
    default:
      return null;
  }
}

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

type SmapsMasks = (fd: number, buf: Buffer, buflen: number, table: Int8Array, starts: Float64Array, masks: Int32Array, max: number) => number;

type FlagSpans = (buf: Buffer, len: number, out: Uint32Array, max: number, lines: Uint32Array, maxLines: number, nLines: number[]) => number;

let fn: ReadAll | undefined;
let spans: FlagSpans | undefined;
let masksFn: SmapsMasks | undefined;
let so: ReturnType<typeof koffi.load> | undefined;

function lib(): ReturnType<typeof koffi.load> {
  if (so) return so;
  // dist/src/sys/ beside dist/native/; src/sys/ (the tests) two levels under it.
  const path = ['../../native/libtsnap-procread.so', '../../dist/native/libtsnap-procread.so'].map((rel) => fileURLToPath(new URL(rel, import.meta.url))).find(existsSync);
  if (!path) throw new SysError('load libtsnap-procread.so (not built: npm run build)', 2);
  return (so = koffi.load(path));
}

function load(): ReadAll {
  return (fn ??= lib().func('long tsnap_read_all(int fd, void *buf, size_t len)') as ReadAll);
}

/** Distinct VmFlags lines tsnap_smaps_flags numbers; past them, the caller's own parser. */
const MAX_LINES = 4096;

/**
 * Each area's VmFlags in smaps bytes (tsnap_smaps_flags): its start
 * address and the number of its flags line, and the distinct lines (the
 * text after "VmFlags:"). Null when a header is malformed (the caller's
 * parser says where) or the lines are too many.
 */
export function smapsFlagSpans(buf: Buffer, len: number): { starts: Float64Array; ids: Uint32Array; lines: string[] } | null {
  spans ??= lib().func('long tsnap_smaps_flags(const void *buf, size_t len, _Out_ void *out, size_t max, _Out_ void *lines, uint32_t max_lines, _Out_ uint32_t *nlines)') as FlagSpans;
  // An area's smaps entry is several hundred bytes: len / 64 bounds the count.
  const max = Math.floor(len / 64) + 1;
  const out = new Uint32Array(max * 4);
  const lineAt = new Uint32Array(MAX_LINES * 2);
  const nLines = [0];
  const n = Number(spans(buf, len, out, max, lineAt, MAX_LINES, nLines));
  if (n < 0) return null;
  const starts = new Float64Array(n);
  const ids = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    // Two halves: one rounding past 2^53 ([vsyscall]), as the JavaScript parser rounds.
    starts[i] = out[4 * i + 1] * 0x100000000 + out[4 * i];
    ids[i] = out[4 * i + 2];
  }
  const lines = new Array<string>(nLines[0]);
  for (let k = 0; k < nLines[0]; k++) lines[k] = buf.toString('latin1', lineAt[2 * k], lineAt[2 * k] + lineAt[2 * k + 1]);
  return { starts, ids, lines };
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

/** tsnap_smaps_masks's answers that are not -errno (tsnap-procread.c). */
const SMAPS_MALFORMED = -100000;
const SMAPS_FULL = -100001;

/** What smapsMasks found: `count` areas, or why it could not parse (the caller's own parser then reads again). */
export type SmapsMasksResult = { count: number } | { retry: 'malformed' | 'full' };

/**
 * The VmFlags of every area of /proc/PID/smaps (`fd`, at its start) as
 * bits of `table` (two-letter token -> bit + 1), read and parsed in C
 * (tsnap_smaps_masks) through `buf`: starts and masks filled, at most
 * starts.length areas. A failed read throws SysError.
 */
export function smapsMasks(fd: number, buf: Buffer, table: Int8Array, starts: Float64Array, masks: Int32Array, what: string): SmapsMasksResult {
  const f = masksFn ??= lib().func('long tsnap_smaps_masks(int fd, _Inout_ void *buf, size_t buflen, const void *table, _Out_ void *starts, _Out_ void *masks, size_t max)') as SmapsMasks;
  const n = Number(f(fd, buf, buf.length, table, starts, masks, Math.min(starts.length, masks.length)));
  if (n === SMAPS_MALFORMED) return { retry: 'malformed' };
  if (n === SMAPS_FULL) return { retry: 'full' };
  if (n < 0) throw new SysError(`read(${what})`, -n);
  return { count: n };
}

type MapsParse = (buf: Buffer, len: number, nums: Float64Array, info: Int32Array, max: number) => number;
let mapsFn: MapsParse | undefined;

/**
 * The lines of /proc/PID/maps text buf[0, len) parsed in C
 * (tsnap_maps_parse): per line six numbers in nums (start, end, offset,
 * major, minor, inode) and three in info (r 1 | w 2 | x 4 | shared 8 |
 * deleted 16; the path's offset in buf and its length). The line count, or
 * null for text the caller's own parser must read (it names the line), or
 * when the library is not built.
 */
export function mapsParse(buf: Buffer, len: number, nums: Float64Array, info: Int32Array): number | null {
  if (!mapsFn) {
    try {
      mapsFn = lib().func('long tsnap_maps_parse(const void *buf, size_t len, _Out_ void *nums, _Out_ void *info, size_t max)') as MapsParse;
    } catch {
      return null;
    }
  }
  const n = Number(mapsFn(buf, len, nums, info, Math.min(Math.floor(nums.length / 6), Math.floor(info.length / 3))));
  return n < 0 ? null : n;
}

/** tsnap_vmaiter_*'s answers that are not -errno (tsnap-vmaiter.c). */
const VMAITER_NO_BTF = -200000;
const VMAITER_FULL = -200001;

type VmaIterLoad = (log: Buffer | null, loglen: number) => number;
type VmaIterRead = (prog: number, pid: number, out: Uint32Array, max: number) => number;
type VmaIterProbes = (addrs: BigUint64Array, n: number) => number;
let iterLoad: VmaIterLoad | undefined;
let iterRead: VmaIterRead | undefined;
let iterProbes: VmaIterProbes | undefined;
let iterUnprobe: ((addrs: BigUint64Array, n: number) => void) | undefined;

/**
 * Loads the BPF task_vma iterator of tsnap-vmaiter.c: its fd, or why not
 * (`errno`, or 'btf' when the kernel's BTF lacks what it needs, or 'lib'
 * when the library is not built). `log`: room for the verifier's words.
 */
export function vmaIterLoad(log?: Buffer): number | { errno: number } | 'btf' | 'lib' {
  try {
    iterLoad ??= lib().func('long tsnap_vmaiter_load(_Out_ char *log, uint32_t loglen)') as VmaIterLoad;
  } catch {
    return 'lib';
  }
  const r = Number(iterLoad(log ?? null, log?.length ?? 0));
  if (r === VMAITER_NO_BTF) return 'btf';
  return r < 0 ? { errno: -r } : r;
}

/**
 * (vm_start, vm_flags) of every VMA of `pid` through the iterator `prog`:
 * four u32 per area in `out` (start low, high, flags low, high), address
 * order. The count, 'full' when `out` is too small, or -errno.
 */
export function vmaIterRead(prog: number, pid: number, out: Uint32Array): number | 'full' {
  iterRead ??= lib().func('long tsnap_vmaiter_read(int prog, int pid, _Out_ void *out, size_t max)') as VmaIterRead;
  const r = Number(iterRead(prog, pid, out, Math.floor(out.length / 4)));
  return r === VMAITER_FULL ? 'full' : r;
}

/** The probe pages of tsnap_vmaiter_probes (one per VmFlags token, 0 where refused), in this process. */
export function vmaIterProbes(): BigUint64Array {
  iterProbes ??= lib().func('long tsnap_vmaiter_probes(_Out_ void *addrs, uint32_t n)') as VmaIterProbes;
  const addrs = new BigUint64Array(14);
  const r = Number(iterProbes(addrs, addrs.length));
  if (r < 0) throw new SysError('mmap(VmFlags probes)', -r);
  return addrs;
}

export function vmaIterUnprobe(addrs: BigUint64Array): void {
  iterUnprobe ??= lib().func('void tsnap_vmaiter_unprobe(const void *addrs, uint32_t n)') as (a: BigUint64Array, n: number) => void;
  iterUnprobe(addrs, addrs.length);
}

/**
 * VmFlags read off the main thread. Producing smaps walks every page table
 * of the target (tens of ms per GiB resident), and it must be read frozen:
 * a madvise() or mlock() changes a VMA's flags in place, with nothing in
 * /proc/PID/maps to tell. So the read is not moved out of the freeze but
 * beside the other frozen work: it is started once frozen, on libuv's pool
 * (one job reads the whole file: tsnap-procread.c), and answers while the
 * main thread runs the remote syscalls of the state collection; the
 * parse is the main thread's, after them (vmFlagsOf: the scan in C). Not a node worker thread any more: its isolate
 * was ~2.4 MiB of the peak RSS (docs/performance.md).
 */
import { readWholeOnPool, smapsFlagSpans } from '../sys/proc-read.js';
import { parseVmFlagsBuffer } from './smaps.js';

/**
 * Room for the whole file in one read: allocated unfilled, so only what
 * the kernel writes becomes resident (~700 bytes per VMA).
 */
const SMAPS_BUFFER = 16 << 20;

/**
 * What parseVmFlagsBuffer gives, from what C found: the main thread only
 * splits each distinct flags line once (a process's areas share a few
 * dozen). Areas with the same flags share one array, as unmergeScratch's
 * do: read-only.
 */
export function vmFlagsOf(buf: Buffer, len: number): Map<number, string[]> {
  const found = smapsFlagSpans(buf, len);
  if (!found) return parseVmFlagsBuffer(buf, len);
  const tokens = found.lines.map((text) => { const t = text.trim(); return t === '' ? [] : t.split(/ +/); });
  const out = new Map<number, string[]>();
  for (let i = 0; i < found.starts.length; i++) out.set(found.starts[i], tokens[found.ids[i]]);
  return out;
}

export class SmapsReader {
  private stopped = false;

  static async start(): Promise<SmapsReader> {
    return new SmapsReader();
  }

  /**
   * Starts the read (the target must be frozen already); the promise gives
   * its VmFlags, or undefined when they could not be read: the caller then
   * reads them itself, and reports that error. Never rejects.
   */
  read(pid: number): Promise<Map<number, string[]> | undefined> {
    if (this.stopped) return Promise.resolve(undefined);
    return readWholeOnPool(`/proc/${pid}/smaps`, SMAPS_BUFFER).then(({ buf, len }) => vmFlagsOf(buf, len)).catch(() => undefined);
  }

  async stop(): Promise<void> {
    this.stopped = true;
  }
}

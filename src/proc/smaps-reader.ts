/**
 * VmFlags read off the main thread. Producing smaps walks every page table
 * of the target (tens of ms per GiB resident), and it must be read frozen:
 * a madvise() or mlock() changes a VMA's flags in place, with nothing in
 * /proc/PID/maps to tell. So the read is not moved out of the freeze but
 * beside the other frozen work: it is started once frozen, on libuv's pool
 * (one job reads the whole file: tsnap-procread.c), and answers while the
 * main thread runs the remote syscalls of the state collection; the
 * parse (parseVmFlagsBuffer: a few ms for 10 000 VMAs) is the main
 * thread's, after them. Not a node worker thread any more: its isolate
 * was ~2.4 MiB of the peak RSS (docs/performance.md).
 */
import { readWholeOnPool } from '../sys/proc-read.js';
import { parseVmFlagsBuffer } from './smaps.js';

/**
 * Room for the whole file in one read: allocated unfilled, so only what
 * the kernel writes becomes resident (~700 bytes per VMA).
 */
const SMAPS_BUFFER = 16 << 20;

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
    return readWholeOnPool(`/proc/${pid}/smaps`, SMAPS_BUFFER).then(({ buf, len }) => parseVmFlagsBuffer(buf, len)).catch(() => undefined);
  }

  async stop(): Promise<void> {
    this.stopped = true;
  }
}

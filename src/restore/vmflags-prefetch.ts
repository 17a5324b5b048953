/**
 * The self-check's VmFlags, read while restore's last steps run. Producing
 * /proc/PID/smaps walks every page table of the process (~7 ms per 256 MiB
 * here, more under load): at the end of a restore that walk was the
 * longest step between a migration's commit and the process running, and
 * it grows with the memory. Nothing restore does after the address space is
 * built (files, state, threads, credentials, registers) changes a VMA's
 * flags, so the first read(2) of smaps is issued right then, on libuv's
 * pool, and answers beside the remote syscalls of those steps.
 *
 * What the check then compares is what that read saw; the check falls
 * back to reading smaps itself when the early read failed or does not hold
 * an area it needs (the restore stub, still mapped at the early read and
 * merged with a neighbour, shifts that area's start once it is unmapped).
 */
import { openSync, closeSync, read, readSync } from 'node:fs';
import { parseVmFlagsBuffer } from '../proc/smaps.js';

export class VmFlagsPrefetch {
  private readonly done: Promise<Map<number, string[]> | null>;

  private constructor(pid: number, areasHint: number) {
    this.done = new Promise((resolve) => {
      let fd: number;
      try {
        fd = openSync(`/proc/${pid}/smaps`, 'r');
      } catch {
        resolve(null);
        return;
      }
      // Big enough for every area's record in one read: the page-table walk
      // then happens on the pool, not on the thread that awaits the answer.
      let buf = Buffer.allocUnsafe(Math.max(256 << 10, areasHint * 2048));
      read(fd, buf, 0, buf.length, null, (err, first) => {
        try {
          if (err) { resolve(null); return; }
          let len = first;
          // A process with more areas than the hint: the rest, here.
          while (first > 0) {
            if (buf.length - len < 16 << 10) {
              const bigger = Buffer.allocUnsafe(buf.length * 2);
              buf.copy(bigger, 0, 0, len);
              buf = bigger;
            }
            first = readSync(fd, buf, len, buf.length - len, null);
            len += first;
          }
          resolve(parseVmFlagsBuffer(buf, len));
        } catch {
          resolve(null);
        } finally {
          try { closeSync(fd); } catch { /* closed */ }
        }
      });
    });
  }

  /** Starts the read of `pid`'s smaps (its address space must be final). */
  static start(pid: number, areasHint: number): VmFlagsPrefetch {
    return new VmFlagsPrefetch(pid, areasHint);
  }

  /** The VmFlags by area start, or null: the check reads them itself. Never rejects. */
  result(): Promise<Map<number, string[]> | null> {
    return this.done;
  }
}

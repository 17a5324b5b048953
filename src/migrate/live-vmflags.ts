/**
 * The self-check's VmFlags of a process built while it arrives, read
 * before the downtime. Producing /proc/PID/smaps walks every page table
 * (~30-40 ms per GiB here): at the end of the restore after COMMITTED it
 * was the largest step that grows with the memory (157 ms at 4 GiB, load
 * 7-9). The receiver learns that the final round is coming (its
 * ITER_BEGIN) before the source is even frozen; the live process is
 * stopped, and only tsnap's own remote syscalls run in it. So smaps is read
 * right then, under the VmFlags watch the dump uses (proc/vmflags-watch.ts:
 * counters on every syscall that can change a VMA's flags), and restore
 * takes that read only if the watch proves it still holds: no such syscall
 * ran since (the final round's layout changes, mlock of locked VMAs would
 * count), no VMA starts anywhere new (a split by mprotect), no thread came.
 * Otherwise the check reads smaps itself, as before.
 *
 * Restore asks just before it creates the threads (a new thread has no
 * counter): after that point it issues no syscall that changes flags (the
 * restore stub's munmap removes the stub's own VMA only).
 *
 * The self-check's guard pages likewise: their scan is a walk of every
 * page-table entry of the process (~3-4 ms per populated 4 GiB here), read
 * here too and taken when the watch saw no guard installed or removed and
 * nothing unmapped, moved or mapped over since (restore's own guard
 * installation counts: an image with guards is scanned again).
 */
import { readVmFlags } from '../proc/smaps.js';
import { readMaps } from '../proc/index.js';
import { VmFlagsWatch } from '../proc/vmflags-watch.js';
import { Pagemap } from '../sys/index.js';
import { scanGuardSpan, userSpan, type GuardsRead } from '../dump/guards.js';
import { earlyScanWanted } from '../dump/early-scan.js';

export class EarlyVmFlags {
  private constructor(private readonly watch: VmFlagsWatch, private readonly flags: Map<number, string[]>, private readonly guards: GuardsRead | null) {}

  /** Starts the watch, then reads smaps and the guards; null when the watch cannot be had (the check reads smaps itself). */
  static read(pid: number): EarlyVmFlags | null {
    const watch = VmFlagsWatch.start(pid);
    if (!watch) return null;
    try {
      const flags = readVmFlags(pid);
      return new EarlyVmFlags(watch, flags, earlyScanWanted() ? readGuards(pid) : null);
    } catch {
      watch.close();
      return null;
    }
  }

  /**
   * With the process stopped: the early flags when they are still its
   * flags, else null (and why, in `stale`), and the early guards likewise.
   * The counters stay until close(): their release waits for RCU grace
   * periods (proc/vmflags-watch.ts), which the receiver lets happen after
   * the downtime (and after post-copy's fill), not while its process
   * starts.
   */
  take(pid: number): { flags: Map<number, string[]> | null; stale: string | null; guards: GuardsRead | null } {
    try {
      const stale = this.watch.check(this.flags, readMaps(pid).map((v) => v.start));
      const guardsStale = this.guards ? this.watch.checkGuards() : 'not read';
      return { flags: stale ? null : this.flags, stale, guards: guardsStale ? null : this.guards };
    } catch (err) {
      this.watch.close();
      throw err;
    }
  }

  /** Whether the early read shows flag `tag` on the VMA starting at `start`. */
  shows(start: number, tag: string): boolean {
    return this.flags.get(start)?.includes(tag) ?? false;
  }

  /** The counters go (on libuv's pool). */
  close(): void {
    this.watch.close();
  }
}

/** The process's guards now; null when they cannot be read (the check then scans them itself). */
function readGuards(pid: number): GuardsRead | null {
  try {
    const span = userSpan(readMaps(pid));
    if (!span) return null;
    const pm = new Pagemap(pid);
    try {
      return { ...span, spans: scanGuardSpan(pm, span.start, span.end) };
    } finally {
      pm.close();
    }
  } catch {
    return null;
  }
}

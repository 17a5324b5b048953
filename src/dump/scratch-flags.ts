/**
 * VmFlags read (smaps, on another thread) while the state step's scratch
 * memory was mapped in the frozen target. The kernel may have merged the
 * scratch with the VMA just above it, which needs equal flags: that VMA's
 * flags are then listed under an earlier start, the merged VMA's. Once the
 * scratch is gone, the VMA starts at the scratch's end again, and its
 * flags are those of whatever VMA held the scratch.
 */
import type { Scratch } from '../inject/remote-syscall.js';

export function unmergeScratch(flags: Map<number, string[]>, s: Pick<Scratch, 'addr' | 'end'>): void {
  if (flags.has(s.end)) return;
  let holder = -1;
  for (const start of flags.keys()) if (start <= s.addr && start > holder) holder = start;
  const f = flags.get(holder);
  if (f) flags.set(s.end, f);
}

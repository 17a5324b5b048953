/**
 * Which pages of MAP_SHARED anonymous memory to store. A page of the shared
 * object shows in a process's pagemap only if that process touched it:
 * a prefork server's parent rarely touches the pages its workers fill
 * (postgres's buffer pool). So the pages come from the object itself, read
 * through /proc/PID/map_files: every page it holds within the VMA's range
 * (SEEK_DATA), whichever process wrote it. Not write-tracked either: a
 * write through another process's mapping would go unseen (delta-selection.ts),
 * so every round stores them all.
 */
import { closeSync, openSync, statSync, constants as C } from 'node:fs';
import { dataExtents, PAGE_SIZE } from '../sys/index.js';
import { readMaps, type Vma } from '../proc/maps.js';
import type { VmaClass, DumpRange } from './memory-plan.js';

export function sharedAnonRanges(pid: number, vmas: readonly Vma[], classes: readonly VmaClass[]): DumpRange[] {
  const out: DumpRange[] = [];
  vmas.forEach((v, i) => {
    if (classes[i] !== 'sharedAnon') return;
    const fd = openSync(`/proc/${pid}/map_files/${v.start.toString(16)}-${v.end.toString(16)}`, C.O_RDONLY);
    try {
      for (const e of dataExtents(fd, v.offset, v.offset + (v.end - v.start))) {
        const start = v.start + Math.floor((e.start - v.offset) / PAGE_SIZE) * PAGE_SIZE;
        const end = v.start + Math.ceil((e.end - v.offset) / PAGE_SIZE) * PAGE_SIZE;
        out.push({ start, end: Math.min(end, v.end), vma: i });
      }
    } finally {
      closeSync(fd);
    }
  });
  return out;
}

/** The shared anonymous objects ("dev:ino", as restore names them) a process maps. */
export function sharedAnonObjects(pid: number): Set<string> {
  const out = new Set<string>();
  for (const v of readMaps(pid)) {
    if (!(v.shared && v.deleted && v.path === '/dev/zero')) continue;
    try {
      const st = statSync(`/proc/${pid}/map_files/${v.start.toString(16)}-${v.end.toString(16)}`);
      out.add(`${st.dev}:${st.ino}`);
    } catch { /* unmapped meanwhile: it is not frozen */ }
  }
  return out;
}

/**
 * For a tree image, in member order: the shared anonymous objects each
 * process maps whose pages an earlier member stores. Restore fills every
 * object from its first member in the same order, so the others need not
 * store it (a prefork server's buffer pool would be stored once per process).
 */
export function sharedStoredEarlier(pids: readonly number[]): Map<number, Set<string>> {
  const seen = new Set<string>();
  const out = new Map<number, Set<string>>();
  for (const pid of pids) {
    const mine = sharedAnonObjects(pid);
    out.set(pid, new Set([...mine].filter((k) => seen.has(k))));
    for (const k of mine) seen.add(k);
  }
  return out;
}

/**
 * Pure decisions for rebuilding an address space: where the stub page goes,
 * how each dumped VMA is re-created, how the vdso/vvar mappings move.
 */
import { isSysvShmPath } from '../proc/sysvipc.js';
import { VMA_RESTORED_FLAGS, type VmaImage } from '../../formats/schema.js';
import { PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_SHARED, MAP_ANONYMOUS, MAP_GROWSDOWN, MAP_FIXED_NOREPLACE, O_RDONLY, O_RDWR } from '../sys/uapi.js';

export interface Span {
  start: number;
  end: number;
}

/**
 * Lowest page-aligned address at or above `from` where `size` bytes touch
 * none of `taken`. The stub must stay clear of both the helper's current
 * mappings and every mapping the image will create.
 */
export function findHole(taken: readonly Span[], size: number, from = 0x10000000, limit = 0x7ffffffff000): number {
  // Layouts come sorted (maps, an image's VMAs): walked as they are, 10 000
  // spans a call; copied and sorted only when they are not (a copy per call
  // was a fifth of a 10 000-VMA restore's allocations besides the image).
  let sorted: readonly Span[] = taken;
  for (let i = 1; i < taken.length; i++) {
    if (taken[i].start < taken[i - 1].start) { sorted = [...taken].sort((a, b) => a.start - b.start); break; }
  }
  let at = from;
  for (let i = 0; i < sorted.length; i++) {
    const s = sorted[i];
    if (s.end <= from) continue;
    if (s.start >= at + size) break;
    if (s.end > at) at = s.end;
  }
  if (at + size > limit) throw new Error('no room for the restore stub');
  return at;
}

export const SPECIAL_MAPPINGS = ['vvar', 'vvar_vclock', 'vdso'] as const;

export function isSpecial(v: VmaImage): boolean {
  return v.special === 'vdso' || v.special === 'vvar' || v.special === 'vvar_vclock' || v.special === 'vsyscall';
}

export type VmaKind = 'anon' | 'sharedAnon' | 'privateFile' | 'sharedFile' | 'sysvShm';

export function vmaKind(v: VmaImage): VmaKind {
  const anon = v.file === null || (v.shared && v.path === '/dev/zero' && v.file.deleted);
  if (anon) return v.shared ? 'sharedAnon' : 'anon';
  // Attached with shmat, not mapped (restore/sysv-shm.ts).
  if (v.shared && v.file!.deleted && isSysvShmPath(v.path)) return 'sysvShm';
  return v.shared ? 'sharedFile' : 'privateFile';
}

export interface MapCall {
  prot: number;
  flags: number;
  /** For file mappings: the path and the open mode. */
  file: { path: string; openFlags: number } | null;
  /** Whether prot must be set to the final value after the pages are written. */
  fixProt: boolean;
}

/**
 * How to mmap a VMA. Memory that receives pages from the image is mapped
 * read-write first (process_vm_writev needs writable pages) and gets its
 * final protection afterwards; shared file mappings get no pages and are
 * mapped with their final protection at once.
 */
export function mapCallFor(v: VmaImage): MapCall {
  const call = baseMapCall(v);
  for (const t of v.flags ?? []) {
    const f = (VMA_RESTORED_FLAGS as Record<string, { map?: number }>)[t];
    if (!f?.map) continue;
    // MAP_DROPPABLE is a map type of its own, in MAP_PRIVATE's place.
    call.flags = f.map === MAP_DROPPABLE ? (call.flags & ~MAP_PRIVATE) | MAP_DROPPABLE : call.flags | f.map;
  }
  return call;
}

const MAP_DROPPABLE = 0x08;

/** madvise() advice to set again on a VMA, in the order smaps listed it. */
export function adviceFor(v: VmaImage): readonly number[] {
  let out: number[] | null = null;
  for (const t of v.flags ?? []) {
    const f = (VMA_RESTORED_FLAGS as Record<string, { advice?: number }>)[t];
    if (f?.advice !== undefined) (out ??= []).push(f.advice);
  }
  // Most VMAs have none: one shared empty list, not 10 000.
  return out ?? NO_ADVICE;
}
const NO_ADVICE: readonly number[] = Object.freeze([]);

/** adviceFor() with the VmFlags tag each piece of advice comes from. */
export function adviceTagsFor(v: VmaImage): [tag: string, advice: number][] {
  const out: [string, number][] = [];
  for (const t of v.flags ?? []) {
    const f = (VMA_RESTORED_FLAGS as Record<string, { advice?: number }>)[t];
    if (f?.advice !== undefined) out.push([t, f.advice]);
  }
  return out;
}

/** mlock2() flags for a locked VMA, null when it was not locked. */
export function lockFor(v: VmaImage): number | null {
  for (const t of v.flags ?? []) {
    const f = (VMA_RESTORED_FLAGS as Record<string, { lock?: number }>)[t];
    if (f?.lock !== undefined) return f.lock;
  }
  return null;
}

function baseMapCall(v: VmaImage): MapCall {
  const kind = vmaKind(v);
  const fixed = MAP_FIXED_NOREPLACE | (v.special === 'stack' ? MAP_GROWSDOWN : 0);
  switch (kind) {
    case 'anon':
      return { prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE | MAP_ANONYMOUS | fixed, file: null, fixProt: v.prot !== (PROT_READ | PROT_WRITE) };
    case 'sharedAnon':
      return { prot: PROT_READ | PROT_WRITE, flags: MAP_SHARED | MAP_ANONYMOUS | fixed, file: null, fixProt: v.prot !== (PROT_READ | PROT_WRITE) };
    case 'privateFile':
      return { prot: PROT_READ | PROT_WRITE, flags: MAP_PRIVATE | fixed, file: { path: v.path, openFlags: O_RDONLY }, fixProt: v.prot !== (PROT_READ | PROT_WRITE) };
    case 'sysvShm':
      throw new Error(`SysV shm at 0x${v.start.toString(16)} is attached by shmat, not mapped`);
    case 'sharedFile':
      // Opened for writing when the mapping was writable or could be made so
      // (VM_MAYWRITE): a later mprotect(PROT_WRITE) of the program must work.
      return { prot: v.prot, flags: MAP_SHARED | fixed, file: { path: v.path, openFlags: v.prot & PROT_WRITE || v.flags?.includes('mw') ? O_RDWR : O_RDONLY }, fixProt: false };
  }
}

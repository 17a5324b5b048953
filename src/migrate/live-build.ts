/**
 * The receiver's process, built while the rounds of a migration arrive: a
 * stopped process (restore's createProcess, stub and special mappings)
 * whose address space follows each round's layout and whose memory is
 * written chunk by chunk as the pages arrive. After the final round only
 * the rest of restore remains (restore.ts, with this process as `live`).
 *
 * A round's layout is applied as a difference: memory whose mapping is the
 * same kind of mapping of the same thing at the same offset keeps its
 * pages (the round's 'here' and 'zero' runs update them, exactly as a delta
 * image does its parent's), the rest is unmapped and mapped fresh. The
 * stopped process is ours alone: tsnap serve traces it with EXITKILL, so it
 * dies with serve, and any failure kills it here.
 */
import { EarlyVmFlags } from './live-vmflags.js';
import { createProcess } from '../restore/create-process.js';
import { RemoteTask } from '../inject/remote-task.js';
import { installStub, clearHelperMappings, placeSpecialMappings, mapVmas, STUB_SIZE, type Stub } from '../restore/address-space.js';
import { RemoteBatch } from '../inject/remote-batch.js';
import { isSpecial, vmaKind, mapCallFor, adviceTagsFor } from '../restore/layout-plan.js';
import { openStdio, type LiveProcess } from '../restore/restore.js';
import { isAioRing } from '../files/aio.js';
import { VmCopier, SYS, SIGKILL, kill, PROT_WRITE, type RemoteRange } from '../sys/index.js';
import { reapTraced } from '../freeze/frozen-process.js';
import { normalize, subtract, intersect, type Range } from '../image/ranges.js';
import { TsnapError } from '../errors.js';
import type { NewProcess } from '../restore/create-process.js';
import type { ProcessImage, VmaImage } from '../../formats/schema.js';
import type { ChunkRun } from './page-stream.js';
import type { Image } from '../image/image-reader.js';
import { PAGE_SIZE } from '../sys/uapi.js';

const PAGE = PAGE_SIZE;
const MADV_DONTNEED = 4;
const MADV_REMOVE = 9;

/** Why a layout cannot be built live (restore from the written chain then), or null. */
export function liveObstacle(vmas: readonly VmaImage[]): string | null {
  for (const v of vmas) {
    if (isSpecial(v)) continue;
    const at = `0x${v.start.toString(16)}`;
    if (v.path.startsWith('/memfd:')) return `it maps the memfd ${v.path} at ${at}`;
    if (isAioRing(v)) return `it has an aio ring at ${at}`;
    const k = vmaKind(v);
    if (k === 'sysvShm') return `it attaches SysV shared memory at ${at}`;
    if ((k === 'privateFile' || k === 'sharedFile') && v.file?.deleted) return `it maps the deleted file ${v.path} at ${at}`;
  }
  return null;
}

/** Two pieces of memory with the same identity hold the same thing: their pages carry over. */
export function identity(v: VmaImage): string {
  const c = mapCallFor(v);
  return [vmaKind(v), c.flags, c.prot, c.file?.path ?? '', c.file?.openFlags ?? '', c.file ? v.pgoff - v.start : 0].join('|');
}

function piece(v: VmaImage, r: Range): VmaImage {
  return { ...v, start: r.start, end: r.end, pgoff: v.file ? v.pgoff + (r.start - v.start) : v.pgoff, guards: undefined };
}

export interface LiveLayout {
  vmas: VmaImage[];
  zero: Range[];
  incremental: boolean;
}

export class LiveBuild implements LiveProcess {
  /** The non-special VMAs as mapped now. */
  private mapped: VmaImage[] = [];
  /** Where pages may be written: memory whose pages the image stores (never a shared file's). */
  private writable: Range[] = [];
  /** The part of it mapped without PROT_WRITE: written through /proc/PID/mem. */
  private readOnly: Range[] = [];
  private specials: VmaImage[] = [];
  private readonly copier: VmCopier;
  pages = 0;
  bytes = 0;
  image: Image | null = null;
  /** Read when the final round begins (receiver.ts); closed with the build. */
  earlyVmFlags: EarlyVmFlags | null = null;
  /** Set by the receiver (window-priority.ts). */
  beforeStart?: (tids: readonly number[]) => void;
  threadsInherit?: (on: boolean) => void;
  private dead = false;

  private constructor(readonly proc: NewProcess, readonly rt: RemoteTask, readonly stub: Stub) {
    this.copier = new VmCopier(proc.pid);
  }

  get pid(): number {
    return this.proc.pid;
  }

  /** A stopped process under `pid` (null: any free pid) laid out as `first`. */
  static async create(pid: number | null, first: LiveLayout, stdio: { stdout?: string; stderr?: string }): Promise<LiveBuild> {
    const files = openStdio(stdio);
    let made;
    try {
      made = await createProcess(pid, files.options);
    } finally {
      files.close();
    }
    made.helper.kill('SIGKILL');
    const rt = new RemoteTask(made.proc.sc, made.proc.mem);
    let b: LiveBuild | null = null;
    try {
      const layout = { mm: { vmas: first.vmas } };
      const stub = installStub(rt, [layout]);
      b = new LiveBuild(made.proc, rt, stub);
      clearHelperMappings(rt, stub);
      placeSpecialMappings(rt, layout, stub);
      b.specials = first.vmas.filter(isSpecial);
      b.apply(first);
      return b;
    } catch (err) {
      if (b) b.kill();
      else { try { kill(made.proc.pid, SIGKILL); } catch { /* gone */ } reapTraced(made.proc.pid); }
      throw err;
    }
  }

  /** A round's layout: map and unmap what changed, drop the pages it records as absent. */
  apply(l: LiveLayout): void {
    const obstacle = liveObstacle(l.vmas);
    if (obstacle) throw new TsnapError('unsupported', `the process cannot be built while it arrives: ${obstacle}`);
    const specials = l.vmas.filter(isSpecial);
    if (specials.length !== this.specials.length || specials.some((s, i) => s.start !== this.specials[i].start || s.end !== this.specials[i].end)) {
      throw new TsnapError('unsupported', 'the process moved its vdso or vvar while it was being migrated');
    }
    const next = l.vmas.filter((v) => !isSpecial(v));
    const keep = this.kept(next);
    const rt = this.rt;
    const gone = new RemoteBatch(rt);
    for (const r of subtract(normalize(this.mapped), keep)) gone.push(`munmap(0x${r.start.toString(16)})`, SYS.munmap, [r.start, r.end - r.start]);
    gone.flush();
    this.mapped = next;
    this.writable = normalize(next.filter((v) => v.dumped && vmaKind(v) !== 'sharedFile'));
    const fresh = next.flatMap((v) => subtract([{ start: v.start, end: v.end }], keep).map((r) => piece(v, r)));
    if (fresh.some((v) => v.start < this.stub.addr + STUB_SIZE && v.end > this.stub.addr)) throw new TsnapError('unsupported', 'the process mapped memory where the receiver keeps its restore stub');
    mapVmas(rt, { mm: { vmas: fresh } });
    // Final protections now, not after the freeze: memory that keeps its
    // pages gets what the program set since; fresh memory what it has.
    const batch = new RemoteBatch(rt);
    for (const v of next) {
      if (vmaKind(v) === 'sharedFile') continue; // mapped with its own protection
      for (const r of intersect([{ start: v.start, end: v.end }], keep)) {
        for (const [s, e, prot] of this.protsOver(r)) if (prot !== v.prot) batch.push(`mprotect(0x${s.toString(16)})`, SYS.mprotect, [s, e - s, v.prot]);
      }
    }
    for (const v of fresh) if (mapCallFor(v).fixProt) batch.push(`mprotect(0x${v.start.toString(16)})`, SYS.mprotect, [v.start, v.end - v.start, v.prot]);
    this.protNow = next.map((v) => [v.start, v.end, v.prot]);
    this.readOnly = normalize(next.filter((v) => v.dumped && vmaKind(v) !== 'sharedFile' && !(v.prot & PROT_WRITE)));
    // A full image after the first: nothing kept holds anything any more.
    const absent = l.incremental ? normalize(l.zero) : keep;
    for (const v of next) {
      if (!v.dumped) continue;
      const advice = vmaKind(v) === 'sharedAnon' ? MADV_REMOVE : MADV_DONTNEED;
      for (const r of intersect([{ start: v.start, end: v.end }], absent)) batch.push(`madvise(0x${r.start.toString(16)}, absent)`, SYS.madvise, [r.start, r.end - r.start, advice]);
    }
    batch.flush();
  }

  /** [start, end, prot] of every mapped VMA as set now. */
  private protNow: [number, number, number][] = [];

  /** The protections set over `r` before this round's changes, piece by piece. */
  private protsOver(r: Range): [number, number, number][] {
    return this.protNow.filter(([s, e]) => s < r.end && e > r.start).map(([s, e, prot]): [number, number, number] => [Math.max(s, r.start), Math.min(e, r.end), prot]);
  }

  /** Ranges of `next` that the current mapping already holds as the same thing. */
  private kept(next: readonly VmaImage[]): Range[] {
    const out: Range[] = [];
    let j = 0;
    for (const n of next) {
      while (j < this.mapped.length && this.mapped[j].end <= n.start) j++;
      const id = identity(n);
      for (let k = j; k < this.mapped.length && this.mapped[k].start < n.end; k++) {
        const o = this.mapped[k];
        if (identity(o) !== id) continue;
        const s = Math.max(o.start, n.start);
        const e = Math.min(o.end, n.end);
        if (s < e) out.push({ start: s, end: e });
      }
    }
    return normalize(out);
  }

  /** Writes one chunk's pages; `data` is its raw content. */
  write(data: Buffer, chunkRuns: readonly ChunkRun[]): void {
    const outside = subtract(normalize(chunkRuns.map((r) => ({ start: r.start, end: r.start + r.pages * PAGE }))), this.writable);
    if (outside.length) throw new TsnapError('badImage', `pages sent for 0x${outside[0].start.toString(16)}, which the round's layout does not store`);
    // Memory the program made read-only (or PROT_NONE) is written with
    // FOLL_FORCE: process_vm_writev needs writable pages.
    const runs = this.readOnly.length ? this.writeReadOnly(data, chunkRuns) : chunkRuns;
    let i = 0;
    while (i < runs.length) {
      // Runs back to back in the chunk go in one process_vm_writev.
      let j = i + 1;
      while (j < runs.length && runs[j].offset === runs[j - 1].offset + runs[j - 1].pages * PAGE) j++;
      const ranges: RemoteRange[] = runs.slice(i, j).map((r) => ({ addr: r.start, len: r.pages * PAGE }));
      const want = ranges.reduce((n, r) => n + r.len, 0);
      const got = this.copier.writev(data, runs[i].offset, ranges);
      if (got !== want) throw new TsnapError('restoreFailed', `process_vm_writev wrote ${got} of ${want} bytes at 0x${runs[i].start.toString(16)} of the process being built`);
      this.pages += want / PAGE;
      this.bytes += want;
      i = j;
    }
  }

  /** Writes the parts of `runs` in read-only memory through /proc/PID/mem; returns the rest. */
  private writeReadOnly(data: Buffer, runs: readonly ChunkRun[]): ChunkRun[] {
    const rest: ChunkRun[] = [];
    for (const r of runs) {
      const span = [{ start: r.start, end: r.start + r.pages * PAGE }];
      for (const x of intersect(span, this.readOnly)) {
        this.proc.mem.write(data, r.offset + (x.start - r.start), x.end - x.start, x.start);
        this.pages += (x.end - x.start) / PAGE;
        this.bytes += x.end - x.start;
      }
      for (const x of subtract(span, this.readOnly)) rest.push({ start: x.start, pages: (x.end - x.start) / PAGE, offset: r.offset + (x.start - r.start) });
    }
    return rest;
  }

  /**
   * restore.ts's memory step for this process: the final image must list
   * the layout built here. Advice set since a VMA was mapped is set again;
   * returns the VMAs whose final protection is still to be set.
   */
  addressSpaceDone(p: ProcessImage): VmaImage[] {
    const want = p.mm.vmas.filter((v) => !isSpecial(v));
    const same = want.length === this.mapped.length && want.every((v, i) => v.start === this.mapped[i].start && v.end === this.mapped[i].end && identity(v) === identity(this.mapped[i]));
    if (!same) throw new TsnapError('restoreFailed', 'the final image\'s memory layout is not the one built while it arrived');
    const batch = new RemoteBatch(this.rt);
    // Advice the early VmFlags read (live-vmflags.ts) shows on the VMA
    // already is not given again: the madvise would change nothing, and
    // the watch, which cannot tell, would count it and make the check read
    // smaps after the commit (20-25 ms at 4 GiB). Every glibc thread stack
    // is MADV_NOHUGEPAGE: any process with threads paid it.
    const early = this.earlyVmFlags;
    for (const v of want) {
      for (const [tag, advice] of adviceTagsFor(v)) {
        if (early?.shows(v.start, tag)) continue;
        batch.push(`madvise(0x${v.start.toString(16)}, ${advice})`, SYS.madvise, [v.start, v.end - v.start, advice]);
      }
    }
    batch.flush();
    // Every protection is set already (apply()).
    return [];
  }

  /** Kills the process and reaps it: nothing half-built stays behind. */
  kill(): void {
    this.earlyVmFlags?.close();
    this.earlyVmFlags = null;
    if (this.dead) return;
    this.dead = true;
    try { kill(this.proc.pid, SIGKILL); } catch { /* gone */ }
    reapTraced(this.proc.pid);
    try { this.proc.mem.close(); } catch { /* closed */ }
  }
}

/**
 * Rebuilding the address space of the new task, which starts as a copy of
 * the helper:
 *   1. map a two-page stub (code `syscall; int3` + scratch) in a hole free in
 *      both layouts, and run every further syscall from it;
 *   2. unmap everything of the helper but the stub and the kernel's special
 *      mappings;
 *   3. move [vvar], [vvar_vclock] and [vdso] to their dumped addresses (same
 *      kernel: same contents), via temporary holes so moves never collide;
 *   4. map every dumped VMA at its address (MAP_FIXED_NOREPLACE: an overlap
 *      is a bug, not something to paper over).
 * Runs of calls (mmaps, madvise, mprotect, guards, mlock) go to the task as
 * one list for the stub's runner (inject/remote-batch.ts): one ptrace round
 * trip per list instead of one per call.
 * The caller fills pages, then calls finishProtections(); the stub goes last.
 */
import { SYS, PROT_READ, PROT_WRITE, PROT_EXEC, MAP_PRIVATE, MAP_SHARED, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, O_RDWR, O_RDONLY, MREMAP_MAYMOVE, MREMAP_FIXED } from '../sys/index.js';
import { readMaps, type Vma } from '../proc/index.js';
import type { VmaImage } from '../../formats/schema.js';
import { findHole, isSpecial, mapCallFor, adviceFor, lockFor, vmaKind, SPECIAL_MAPPINGS, type Span, type MapCall } from './layout-plan.js';
import type { SysvSegments } from './sysv-shm.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { TsnapError } from '../errors.js';
import { isAioRing } from '../files/aio.js';
import { RemoteBatch, BATCH_RUNNER } from '../inject/remote-batch.js';
import { PAGE_SIZE } from '../sys/uapi.js';

const PAGE = PAGE_SIZE;
/**
 * Pages of syscall records after the scratch page: 8192 calls per round
 * trip (10 000 VMAs in two). On a loaded machine each trip waits for the
 * task to be scheduled, which costs more than the records' bytes.
 */
const BATCH_PAGES = 128;
export const STUB_SIZE = (2 + BATCH_PAGES) * PAGE;
/** The runner's place in the code page, after `syscall; int3`. */
const RUNNER_AT = 16;

export interface Stub {
  addr: number;
}

/** What the address-space steps read of an image: its VMA list (a streamed round's layout has only that). */
export interface LayoutOf {
  mm: { vmas: readonly VmaImage[] };
}

/** `images`: every process the stub will serve (a tree's children inherit it through fork). */
export function installStub(rt: RemoteTask, images: readonly LayoutOf[]): Stub {
  const current = readMaps(rt.pid);
  // The image's VMAs come sorted: the helper's few areas are put in place
  // (findHole then need not sort 10 000 spans; a tree's lists are merged once).
  const notVsyscall = (v: { path: string }) => v.path !== '[vsyscall]';
  const taken: Span[] = images.length === 1 ? images[0].mm.vmas.filter(notVsyscall) : images.flatMap((i) => i.mm.vmas.filter(notVsyscall)).sort((a, b) => a.start - b.start);
  for (const v of current) if (notVsyscall(v)) insertSorted(taken, v);
  const addr = findHole(taken, STUB_SIZE);
  const got = Number(rt.sc.check('mmap(stub)', SYS.mmap, addr, STUB_SIZE,
    PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1n, 0));
  if (got !== addr) throw new TsnapError('restoreFailed', `restore stub landed at 0x${got.toString(16)}, not 0x${addr.toString(16)}`);
  rt.mem.write(Buffer.from([0x0f, 0x05, 0xcc]), 0, 3, addr);
  rt.mem.write(BATCH_RUNNER, 0, BATCH_RUNNER.length, addr + RUNNER_AT);
  rt.sc.gadget = addr;
  // TSNAP_REMOTE_TRAP=0: two stops per call as before, the bench's baseline in the same run.
  rt.sc.trapAfter = process.env.TSNAP_REMOTE_TRAP !== '0';
  rt.scratch = addr + PAGE;
  rt.scratchSize = PAGE;
  rt.batchArea = { runner: addr + RUNNER_AT, area: addr + 2 * PAGE, size: BATCH_PAGES * PAGE };
  return { addr };
}

export function clearHelperMappings(rt: RemoteTask, stub: Stub): void {
  const batch = new RemoteBatch(rt);
  for (const v of readMaps(rt.pid)) {
    if (v.start === stub.addr || v.path === '[vsyscall]' || SPECIAL_MAPPINGS.some((s) => v.path === `[${s}]`)) continue;
    batch.push(`munmap(0x${v.start.toString(16)})`, SYS.munmap, [v.start, v.end - v.start]);
  }
  batch.flush();
}

export function placeSpecialMappings(rt: RemoteTask, image: LayoutOf, stub: Stub): void {
  const current = readMaps(rt.pid);
  const have = new Map<string, Vma>();
  for (const v of current) have.set(v.path, v);
  const want = image.mm.vmas.filter((v) => v.special && (SPECIAL_MAPPINGS as readonly string[]).includes(v.special));
  for (const w of want) {
    const c = have.get(`[${w.special}]`);
    if (!c || c.end - c.start !== w.end - w.start) {
      throw new TsnapError('kernel', `[${w.special}] of this kernel ${c ? `is ${c.end - c.start} bytes, the image's ${w.end - w.start}` : 'is missing'}; restore on the kernel that made the dump`);
    }
  }
  // One list, run in order (one round trip instead of two per move).
  const batch = new RemoteBatch(rt);
  // Phase 1: every special mapping to a temporary hole clear of everything.
  // Sorted once and kept so: findHole then need not sort 10 000 spans per move.
  // The image's VMAs come sorted (image-shapes.ts refuses others): the few
  // other spans are put in place, not the whole list sorted again.
  const taken: Span[] = image.mm.vmas.filter((v) => v.start < 0x800000000000);
  for (const v of [...current, { start: stub.addr, end: stub.addr + STUB_SIZE }]) if (v.start < 0x800000000000) insertSorted(taken, v);
  const moved = new Map<string, number>();
  for (const name of SPECIAL_MAPPINGS) {
    const c = have.get(`[${name}]`);
    if (!c) continue;
    const size = c.end - c.start;
    const tmp = findHole(taken, size, 0x100000000);
    insertSorted(taken, { start: tmp, end: tmp + size });
    remap(batch, c.start, size, tmp);
    moved.set(name, tmp);
  }
  // Phase 2: to the dumped addresses; unwanted ones (the image had none) go away.
  for (const name of SPECIAL_MAPPINGS) {
    const tmp = moved.get(name);
    if (tmp === undefined) continue;
    const w = want.find((v) => v.special === name);
    const size = have.get(`[${name}]`)!.end - have.get(`[${name}]`)!.start;
    if (w) remap(batch, tmp, size, w.start);
    else batch.push(`munmap([${name}])`, SYS.munmap, [tmp, size]);
  }
  batch.flush();
}

/** Into `spans`, sorted by start, at its place (binary search). */
function insertSorted(spans: Span[], v: Span): void {
  let lo = 0;
  let hi = spans.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (spans[mid].start <= v.start) lo = mid + 1;
    else hi = mid;
  }
  spans.splice(lo, 0, v);
}

function remap(batch: RemoteBatch, from: number, size: number, to: number): void {
  if (from === to) return;
  batch.push('mremap', SYS.mremap, [from, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, to], {
    value: BigInt(to),
    mismatch: (got) => new TsnapError('restoreFailed', `mremap to 0x${to.toString(16)} landed at 0x${got.toString(16)}`),
  });
}

/**
 * Maps every dumped VMA. Returns the VMAs that still need their final
 * protection. `shared`: VMAs that map memory another restored process
 * already holds (MAP_SHARED anonymous memory inherited through fork), by
 * start address: the path to open for it (/proc/PID/map_files/...).
 * `fileAt`: file VMAs to map from another path than their own, by start
 * address (memfds, recreated by restore: /proc/PID/fd/N). `sysv`: the SysV
 * shm segments restore made or took, attached by shmat. `receivesPages`:
 * whether the page writer will write into a VMA (absent: assume it will).
 */
export function mapVmas(rt: RemoteTask, image: LayoutOf, shared: Map<number, string> = new Map(), fileAt: Map<number, string> = new Map(), sysv?: SysvSegments, receivesPages?: (v: VmaImage) => boolean): VmaImage[] {
  const fileFds = new Map<string, number>();
  const fixLater: VmaImage[] = [];
  const batch = new RemoteBatch(rt);
  const run = new AnonRun(batch, rt);
  try {
    for (const v of image.mm.vmas) {
      // Whatever is not private anonymous memory next to the run ends it (its calls keep their order).
      if (!run.joins(v)) run.emit();
      // aio rings are made by io_setup (src/files/aio.ts), in this place left free.
      if (isSpecial(v) || isAioRing(v)) continue;
      const from = shared.get(v.start);
      if (from !== undefined) {
        // One at a time, in order: its fd lives only around its own mmap.
        batch.flush();
        const fd = rt.open(from, v.prot & PROT_WRITE || v.flags?.includes('mw') ? O_RDWR : O_RDONLY);
        try {
          const got = Number(rt.sc.check(`mmap(0x${v.start.toString(16)} shared)`, SYS.mmap,
            v.start, v.end - v.start, v.prot, MAP_SHARED | MAP_FIXED_NOREPLACE, fd, v.pgoff));
          if (got !== v.start) throw new TsnapError('restoreFailed', `mmap of 0x${v.start.toString(16)} landed at 0x${got.toString(16)}`);
        } finally {
          rt.close(fd);
        }
        advise(rt, v);
        continue;
      }
      if (vmaKind(v) === 'sysvShm') {
        batch.flush();
        if (!sysv) throw new TsnapError('badImage', `the VMA at 0x${v.start.toString(16)} attaches SysV shm but the image holds no segment`);
        sysv.attach(rt, v);
        advise(rt, v);
        continue;
      }
      const call = mapCallFor(v);
      // No page will be written into it: its final protection right away (restore/data-ranges.ts).
      if (call.fixProt && receivesPages && !receivesPages(v)) {
        call.prot = v.prot;
        call.fixProt = false;
      }
      if (run.add(v, call)) {
        if (call.fixProt) fixLater.push(v);
        continue;
      }
      // A file with no name any more (a memfd): mapped from where restore recreated it.
      const path = fileAt.get(v.start);
      if (path !== undefined && call.file) call.file = { ...call.file, path };
      let fd = -1;
      let pgoff = 0;
      if (call.file) {
        const key = `${call.file.openFlags}:${call.file.path}`;
        let f = fileFds.get(key);
        if (f === undefined) {
          f = rt.open(call.file.path, call.file.openFlags);
          fileFds.set(key, f);
        }
        fd = f;
        pgoff = v.pgoff;
      }
      // The name is made only if the call fails: 10 000 hex strings cost more than the mmaps' records.
      batch.push(() => `mmap(0x${v.start.toString(16)} ${v.path || 'anon'})`, SYS.mmap, [v.start, v.end - v.start, call.prot, call.flags, fd, pgoff], landsAt(v.start));
      advise(rt, v, batch);
      if (call.fixProt) fixLater.push(v);
    }
    run.emit();
    // Before the finally closes the files these mmaps name.
    batch.flush();
  } finally {
    // One list: each close alone would be two round trips.
    const closes = new RemoteBatch(rt);
    for (const f of fileFds.values()) closes.push(`close(${f})`, SYS.close, [f]);
    closes.flush();
  }
  return fixLater;
}

/**
 * Adjacent private anonymous VMAs of the same mmap flags, mapped by one
 * mmap and split by mprotect: 10 000 one-page VMAs of alternating
 * protections were 10 000 mmaps; they are one mmap and 5 000 mprotects
 * (the task's time for them here: ~10 -> ~7.7 ms, and half the records).
 * The run is mapped with the protection every member has (the AND of
 * theirs) and each member with more gets it by mprotect: memory mapped
 * writable is charged to the commit limit (VM_ACCOUNT) and keeps the charge
 * when write is taken away, so a member that is not writable is never
 * mapped writable, and each is charged as its own mmap would have been.
 * The kernel's areas come out the same (a split area keeps its flags;
 * areas that the kernel would merge it merges either way). Special areas
 * (heap, stack) are mapped on their own.
 */
class AnonRun {
  private members: { v: VmaImage; prot: number }[] = [];
  private flags = 0;
  private end = -1;

  constructor(private readonly batch: RemoteBatch, private readonly rt: RemoteTask) {}

  /** Whether `v` could be added (the caller ends the run before anything that cannot). */
  joins(v: VmaImage): boolean {
    return this.members.length === 0 || (v.start === this.end && eligible(v));
  }

  /** Adds `v` to the run (started anew when it cannot join); false when it is not such memory. */
  add(v: VmaImage, call: MapCall): boolean {
    if (!eligible(v) || call.file) return false;
    if (this.members.length > 0 && (v.start !== this.end || call.flags !== this.flags)) this.emit();
    if (this.members.length === 0) this.flags = call.flags;
    this.members.push({ v, prot: call.prot });
    this.end = v.end;
    return true;
  }

  emit(): void {
    const m = this.members;
    if (m.length === 0) return;
    this.members = [];
    const start = m[0].v.start;
    let base = PROT_READ | PROT_WRITE | PROT_EXEC;
    for (const x of m) base &= x.prot;
    const first = m[0].v;
    this.batch.push(() => `mmap(0x${start.toString(16)} ${m.length > 1 ? `anon, ${m.length} VMAs` : first.path || 'anon'})`, SYS.mmap, [start, this.end - start, base, this.flags, -1, 0], landsAt(start));
    for (const { v, prot } of m) {
      if (prot !== base) this.batch.push(mprotectName, SYS.mprotect, [v.start, v.end - v.start, prot], undefined, v);
      advise(this.rt, v, this.batch);
    }
  }
}

/** What a failed mprotect of a run's member is called: one function for all, not a closure each. */
const mprotectName = (v: unknown) => `mprotect(0x${(v as VmaImage).start.toString(16)})`;

/** Private anonymous memory that is not the heap or the stack. */
const eligible = (v: VmaImage) => v.special === null && vmaKind(v) === 'anon';

/** An mmap at a fixed address must land exactly there. */
function landsAt(start: number) {
  return { value: start, mismatch: (got: bigint) => new TsnapError('restoreFailed', `mmap of 0x${start.toString(16)} landed at 0x${got.toString(16)}`) };
}

export function finishProtections(rt: RemoteTask, vmas: VmaImage[]): void {
  const batch = new RemoteBatch(rt);
  for (const v of vmas) batch.push(() => `mprotect(0x${v.start.toString(16)})`, SYS.mprotect, [v.start, v.end - v.start, v.prot]);
  batch.flush();
}

/**
 * madvise() state of a VMA as it was (before its pages are written: THP
 * advice matters then). With `batch`, queued there; else run at once.
 */
export function advise(rt: RemoteTask, v: VmaImage, batch?: RemoteBatch): void {
  const b = batch ?? new RemoteBatch(rt);
  for (const a of adviceFor(v)) b.push(() => `madvise(0x${v.start.toString(16)}, ${a})`, SYS.madvise, [v.start, v.end - v.start, a]);
  if (!batch) b.flush();
}

/** mlock state, once the pages are written (locking first would fault them all in twice). */
export function lockVmas(rt: RemoteTask, vmas: readonly VmaImage[]): void {
  const batch = new RemoteBatch(rt);
  for (const v of vmas) {
    const flags = lockFor(v);
    if (flags !== null) batch.push(`mlock2(0x${v.start.toString(16)})`, SYS.mlock2, [v.start, v.end - v.start, flags]);
  }
  batch.flush();
}

const MADV_GUARD_INSTALL = 102;

/**
 * Guard regions as they were, once the pages are written (a guard zaps what
 * it covers) and before mlock (which a guard does not go with).
 */
export function installGuards(rt: RemoteTask, vmas: readonly VmaImage[]): void {
  const batch = new RemoteBatch(rt);
  for (const v of vmas) {
    for (const [s, e] of v.guards ?? []) batch.push(`madvise(0x${s.toString(16)}, MADV_GUARD_INSTALL)`, SYS.madvise, [s, e - s, MADV_GUARD_INSTALL]);
  }
  batch.flush();
}

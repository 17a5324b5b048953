/**
 * The fault server of a copy-on-write dump, on a worker thread.
 *
 * Why a worker thread: a write to a protected page blocks the writing
 * thread of the target until tsnap unprotects it, so faults must be served
 * within microseconds even while the main thread is inside a long
 * process_vm_readv or waiting for the page writer. A worker can sleep in
 * poll() on the uffd (blocking only itself) and shares memory with the
 * main thread, which a separate helper process could only do through a
 * mapped file and a protocol; koffi and src/sys load in a worker as they
 * do on the main thread.
 *
 * For each write fault: save the page (and the not yet saved pages of its
 * aligned block) into the shared store, publish the slots, then unprotect,
 * which wakes the writer. Pages the main thread has passed only need the
 * wake-up. Removal events (munmap, MADV_DONTNEED, mremap) over pages not
 * yet taken mark the dump lost: the kernel reports an unmap after the data
 * is gone, and a removal only just before, as the read of the event lets
 * it proceed, so such pages cannot be saved in time.
 */
import { workerData, parentPort, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { VmCopier } from '../sys/memory.js';
import { pollIn, readSome, WriteProtector, raiseThreadPriority } from '../sys/uffd-wp.js';
import { decodeUffdMsg } from '../sys/uffd-msg.js';
import { UFFD_MSG_SIZE } from '../sys/uapi.js';
import { CTL, TIMES, PAGE, HUGE_PAGE, rangeOf, type CowConfig, type CowEarlyConfig, type CowShared, type IndexedRange } from './cow-shared.js';

const { shared, port } = workerData as { shared: CowShared; port: MessagePort };
const ctl = new Int32Array(shared.ctl);
const times = new Float64Array(shared.times);

raiseThreadPriority();
parentPort!.postMessage('ready');
// Sleep until the ranges are protected and the configuration is posted.
while (Atomics.load(ctl, CTL.GO) === 0) Atomics.wait(ctl, CTL.GO, 0, 1000);
if (Atomics.load(ctl, CTL.STOP) === 0) {
  const first = receiveMessageOnPort(port)!.message as CowConfig | CowEarlyConfig;
  if ('early' in first) {
    early(first);
    // The snapshot's configuration follows once the frozen scan is done (GO 2).
    while (Atomics.load(ctl, CTL.GO) < 2) Atomics.wait(ctl, CTL.GO, 1, 1000);
    if (Atomics.load(ctl, CTL.STOP) === 0) serve(receiveMessageOnPort(port)!.message as CowConfig);
  } else {
    serve(first);
  }
}
Atomics.store(ctl, CTL.STATE, 2);
port.close();

/**
 * Before the freeze (cow-prearm.ts): memory is protected while the target
 * runs, and no snapshot exists yet, so a write fault only needs its page
 * unprotected. Such pages read as written to the frozen scan, which
 * protects them again. The main thread, frozen, ends the phase (EARLY 1 ->
 * 2) when the worker is not draining (EARLY 4), so that no page is
 * unprotected behind that scan, without waiting for this thread to be
 * scheduled. A fault read and not served because of it needs nothing: its
 * writer was interrupted by the freeze and faults again after it.
 */
function early(cfg: CowEarlyConfig): void {
  const wp = new WriteProtector(cfg.uffd);
  const msgs = Buffer.alloc(UFFD_MSG_SIZE * 64);
  const poke = Buffer.alloc(16);
  const log = new Float64Array(cfg.log);
  const inHuge = (addr: number) => {
    let lo = 0;
    let hi = cfg.huge.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = cfg.huge[mid];
      if (addr < r.start) hi = mid - 1;
      else if (addr >= r.end) lo = mid + 1;
      else return true;
    }
    return false;
  };
  const drain = () => {
    for (;;) {
      const n = readSome(cfg.uffd, msgs);
      if (n === 0) return;
      for (let i = 0; i < n / UFFD_MSG_SIZE; i++) {
        // Removal events only need reading (their writer waits for that); nothing is copied yet.
        const m = decodeUffdMsg(msgs, i);
        if (m.event === 'fault') {
          // A huge page goes whole: unprotecting 4 KiB of it would split it, and
          // the frozen scan and protection would then walk 512 entries, not one.
          const huge = inHuge(m.addr);
          const page = huge ? m.addr - (m.addr % HUGE_PAGE) : m.addr - (m.addr % PAGE);
          wp.set(page, huge ? HUGE_PAGE : PAGE, false);
          // Logged for the main thread's next pass; the count is stored after the entry.
          const n = Atomics.load(ctl, CTL.EARLY_FAULTS);
          log[n % log.length] = huge ? page + 1 : page;
          Atomics.store(ctl, CTL.EARLY_FAULTS, n + 1);
        }
      }
    }
  };
  for (;;) {
    const [ready, poked] = pollIn([cfg.uffd, cfg.wakeFd], -1);
    if (poked) readSome(cfg.wakeFd, poke);
    if (Atomics.load(ctl, CTL.STOP)) return;
    // Busy (4) only with the main thread's leave: once it has ended the phase (2), nothing more
    // is let go, and what poll() reported is left for the serving phase to read.
    if (Atomics.compareExchange(ctl, CTL.EARLY, 1, 4) !== 1) return;
    if (ready) drain();
    Atomics.store(ctl, CTL.EARLY, 1);
    Atomics.notify(ctl, CTL.EARLY);
  }
}

function serve(cfg: CowConfig): void {
  const { ranges, uffd, wakeFd } = cfg;
  const slots = new Int32Array(cfg.slots);
  const store = Buffer.from(cfg.store);
  const capacity = store.length / PAGE;
  const copier = new VmCopier(cfg.pid);
  const msgs = Buffer.alloc(UFFD_MSG_SIZE * 64);
  Atomics.store(ctl, CTL.STATE, 1);

  const lose = (event: number, at: number) => {
    if (Atomics.compareExchange(ctl, CTL.LOST, 0, 1) === 0) {
      Atomics.store(ctl, CTL.LOST_EVENT, event);
      times[TIMES.LOST_AT] = at;
    }
  };

  /** Whether [start, end) holds a page not yet taken by either thread, given the cursor read before the event. */
  const untaken = (start: number, end: number, cursor: number): boolean => {
    let i = rangeOf(ranges, start);
    if (i < 0) i = ranges.findIndex((r) => r.end > start);
    for (; i >= 0 && i < ranges.length && ranges[i].start < end; i++) {
      const r = ranges[i];
      const from = Math.max(start, r.start);
      const to = Math.min(end, r.end);
      for (let a = from - (from % PAGE); a < to; a += PAGE) {
        const idx = r.first + (a - r.start) / PAGE;
        if (idx >= cursor && Atomics.load(slots, idx) === 0) return true;
      }
    }
    return false;
  };

  const free = new Int32Array(cfg.free);
  const one = [{ addr: 0, len: PAGE }];

  /**
   * Saves pages of `want` (the faulting one first) into store slots and
   * returns those saved: one read into fresh consecutive slots while there
   * are, else page by page into slots the main thread gave back.
   */
  const takeSlots = (want: number[]): { addr: number; slot: number }[] => {
    const next = Atomics.load(ctl, CTL.NEXT_SLOT);
    const head = Atomics.load(ctl, CTL.FREE_HEAD);
    let tail = Atomics.load(ctl, CTL.FREE_TAIL);
    if (tail === head && next + want.length <= capacity) {
      Atomics.store(ctl, CTL.NEXT_SLOT, next + want.length);
      const got = copier.readv(store, next * PAGE, want.map((a) => ({ addr: a, len: PAGE })));
      return want.slice(0, Math.floor(got / PAGE)).map((addr, k) => ({ addr, slot: next + k }));
    }
    const out: { addr: number; slot: number }[] = [];
    let bump = next;
    for (const addr of want) {
      let slot: number;
      if (tail < head) slot = free[tail++ % capacity];
      else if (bump < capacity) slot = bump++;
      else break;
      one[0].addr = addr;
      if (copier.readv(store, slot * PAGE, one) !== PAGE) break;
      out.push({ addr, slot });
    }
    Atomics.store(ctl, CTL.FREE_TAIL, tail);
    Atomics.store(ctl, CTL.NEXT_SLOT, bump);
    return out;
  };

  const wp = new WriteProtector(uffd);
  let lastFault = -Infinity;
  // The target is still frozen: this half of the protecting runs beside the main thread's.
  let failed = 0;
  for (const r of cfg.protect) {
    failed = wp.set(r.start, r.len, true);
    if (failed) break;
  }
  Atomics.store(ctl, CTL.PROTECTED, failed || 1);
  Atomics.notify(ctl, CTL.PROTECTED);
  if (failed) return;
  // An error (ENOENT: unmapped meanwhile) means nothing waits there any more.
  const wake = (start: number, len: number) => { wp.set(start, len, false); };

  const fault = (address: number, cursor: number) => {
    const t0 = process.hrtime.bigint();
    Atomics.add(ctl, CTL.FAULTS, 1);
    const page = address - (address % PAGE);
    const ri = rangeOf(ranges, page);
    const r: IndexedRange | undefined = ranges[ri];
    const idx = r ? r.first + (page - r.start) / PAGE : -1;
    if (!r || idx < cursor || Atomics.load(slots, idx) !== 0) {
      wake(page, PAGE);
    } else {
      // The faulting page first: it alone is what the writer waits for. Its
      // block too when the writer moves sequentially (its previous fault was
      // next to it); a random writer would only fill the store with pages
      // it never writes.
      const block = cfg.blockPages * PAGE;
      const near = Math.abs(page - lastFault) <= block;
      lastFault = page;
      const bs = near ? Math.max(r.start, page - (page % block)) : page;
      const be = near ? Math.min(r.end, bs + block) : page + PAGE;
      const want = [page];
      for (let a = bs; a < be; a += PAGE) {
        const i = r.first + (a - r.start) / PAGE;
        if (a !== page && i >= cursor && Atomics.load(slots, i) === 0) want.push(a);
      }
      const taken = takeSlots(want);
      if (taken.length === 0) {
        // Store full: the writer waits until the sequential copy reaches its page.
        Atomics.add(ctl, CTL.DEFERRED, 1);
        return;
      }
      // Slots are published before the page is unprotected.
      taken.forEach(({ addr, slot }) => Atomics.store(slots, r.first + (addr - r.start) / PAGE, slot + 1));
      const saved = taken.map((t) => t.addr).sort((a, b) => a - b);
      Atomics.add(ctl, CTL.FAULT_PAGES, saved.length);
      if (saved.length === 0) {
        wake(page, PAGE); // unreadable now: gone; the main thread's read finds out
      } else {
        // Unprotect what was saved, in runs; pages left out stay protected.
        let s = saved[0];
        let e = s + PAGE;
        for (const a of saved.slice(1)) {
          if (a === e) { e += PAGE; continue; }
          wake(s, e - s);
          s = a; e = a + PAGE;
        }
        wake(s, e - s);
        if (!saved.includes(page)) wake(page, PAGE);
      }
    }
    const ns = Number(process.hrtime.bigint() - t0);
    times[TIMES.SERVICE_NS] += ns;
    if (ns > times[TIMES.MAX_SERVICE_NS]) times[TIMES.MAX_SERVICE_NS] = ns;
  };

  const drain = () => {
    for (;;) {
      // Read before the messages: a range below it was taken before any removal they report.
      const cursor = Atomics.load(ctl, CTL.CURSOR);
      const n = readSome(uffd, msgs);
      if (n === 0) return;
      const count = n / UFFD_MSG_SIZE;
      // Removals first, judged on what was saved before this read: a fault
      // of the same batch served now could read a page the removal, let go
      // by this very read, has already dropped.
      for (let i = 0; i < count; i++) {
        const m = decodeUffdMsg(msgs, i);
        if (m.event === 'unmap' || m.event === 'remove') {
          if (untaken(m.start, m.end, cursor)) lose(m.code, m.start);
        } else if (m.event === 'remap') {
          if (untaken(m.from, m.from + m.len, cursor)) lose(m.code, m.from);
        }
      }
      for (let i = 0; i < count; i++) {
        const m = decodeUffdMsg(msgs, i);
        if (m.event === 'fault') fault(m.addr, cursor);
      }
    }
  };

  for (;;) {
    const [ready, stop] = pollIn([uffd, wakeFd], -1);
    if (ready) drain();
    if (stop || Atomics.load(ctl, CTL.STOP)) { drain(); return; }
  }
}

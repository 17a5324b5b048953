/**
 * Kernel aio contexts (io_setup): each is a ring of completion events
 * mapped into the process as "/[aio] (deleted)", whose address is the
 * aio_context_t the program holds. The kernel keeps the rest (the tail,
 * the request accounting) inside; the ring shows head, tail and the
 * completed events not yet reaped.
 *
 * Dump: the ring's bytes, read frozen. Restore: io_setup with a request
 * count that gives a ring of the same size, dummy writes to /dev/null
 * (they complete at once) until the kernel's tail is where it was, head
 * set as the program left it, the events copied in, and the ring moved to
 * its old address with mremap (the kernel follows its ring there).
 *
 * Requests still in flight (submitted, not completed) live only in the
 * kernel and would never complete after a restore. They cannot be listed
 * from outside; a thread waiting in io_getevents on a ring with no
 * completed events is the sign of them, and is refused.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { SYS, O_WRONLY, MREMAP_MAYMOVE, MREMAP_FIXED, ProcMem, SysError } from '../sys/index.js';
import type { Vma } from '../proc/maps.js';
import type { AioRingImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { TsnapError } from '../errors.js';
import { PAGE_SIZE } from '../sys/uapi.js';

const PAGE = PAGE_SIZE;
/** struct aio_ring: id, nr, head, tail, magic, compat, incompat, header_length (u32 each). */
const HEADER = 32;
const EVENT = 32;
const MAGIC = 0xa10a10a1;
const IOCB_SIZE = 64;
const IOCB_CMD_PWRITE = 1;
const NR_IO_GETEVENTS = 208;
const NR_IO_PGETEVENTS = 333;

export function isAioRing(v: { path: string; shared: boolean }): boolean {
  return v.path === '/[aio]' && v.shared;
}

interface Ring {
  nr: number;
  head: number;
  tail: number;
}

function header(b: Buffer): Ring & { magic: number; compat: number; incompat: number; headerLength: number } {
  return {
    nr: b.readUInt32LE(4), head: b.readUInt32LE(8), tail: b.readUInt32LE(12), magic: b.readUInt32LE(16),
    compat: b.readUInt32LE(20), incompat: b.readUInt32LE(24), headerLength: b.readUInt32LE(28),
  };
}

/** Events a ring of `len` bytes holds (the kernel fills whole pages). */
const eventsIn = (len: number) => Math.floor((len - HEADER) / EVENT);

/**
 * The io_setup() argument that makes a ring of `len` bytes again. The
 * kernel takes max(n, 4 * CPUs), doubles it, adds 2 and rounds the ring
 * up to whole pages: (events - 2) / 2 lands in the same page count.
 */
export function requestsFor(len: number): number {
  return Math.floor((eventsIn(len) - 2) / 2);
}

/** Before the freeze: a thread waiting for events of an empty ring waits for requests in flight. */
export function checkAioRings(pid: number, rings: readonly Pick<Vma, 'start' | 'end'>[]): void {
  if (rings.length === 0) return;
  let tids: string[];
  try { tids = readdirSync(`/proc/${pid}/task`); } catch { return; }
  for (const tid of tids) {
    let sc: string[];
    try { sc = readFileSync(`/proc/${pid}/task/${tid}/syscall`, 'utf8').trim().split(' '); } catch { continue; }
    const nr = Number(sc[0]);
    if (nr !== NR_IO_GETEVENTS && nr !== NR_IO_PGETEVENTS) continue;
    const ctx = Number(BigInt(sc[1]));
    throw new TsnapError('unsupported', `thread ${tid} of process ${pid} waits in io_getevents on the aio ring at 0x${ctx.toString(16)}; requests in flight cannot be restored (dump once they completed)`);
  }
}

/** The rings of a frozen process, read through /proc/PID/mem, each checked to be a ring restore can rebuild. */
export function readAioRings(pid: number, vmas: readonly Vma[]): AioRingImage[] {
  const rings = vmas.filter(isAioRing);
  if (rings.length === 0) return [];
  checkAioRings(pid, rings);
  const mem = new ProcMem(pid);
  try {
    return rings.map((v) => {
      const len = v.end - v.start;
      const ring = Buffer.alloc(len);
      try {
        mem.read(ring, 0, len, v.start);
      } catch (err) {
        if (err instanceof SysError) throw new TsnapError('unsupported', `process ${pid}: the aio ring at 0x${v.start.toString(16)} cannot be read (${err.code})`);
        throw err;
      }
      const h = header(ring);
      const what = `process ${pid}: the aio ring at 0x${v.start.toString(16)}`;
      if (h.magic !== MAGIC || h.headerLength !== HEADER || h.incompat !== 0 || h.nr !== eventsIn(len) || len % PAGE !== 0) {
        throw new TsnapError('unsupported', `${what} is not a ring this kernel's io_setup makes (magic 0x${h.magic.toString(16)}, ${h.nr} events); it cannot be rebuilt`);
      }
      if (h.head >= h.nr || h.tail >= h.nr) throw new TsnapError('unsupported', `${what} has head ${h.head} / tail ${h.tail} outside its ${h.nr} events`);
      return { start: v.start, end: v.end, ring };
    });
  } finally {
    mem.close();
  }
}

/**
 * Before anything is made: the system-wide aio budget (fs.aio-max-nr,
 * counted in io_setup's argument) must hold the rings of the image.
 */
export function checkAioRoom(rings: readonly AioRingImage[]): void {
  if (rings.length === 0) return;
  const need = rings.reduce((n, r) => n + requestsFor(r.end - r.start), 0);
  let used = 0;
  let max = Infinity;
  try {
    used = Number(readFileSync('/proc/sys/fs/aio-nr', 'utf8'));
    max = Number(readFileSync('/proc/sys/fs/aio-max-nr', 'utf8'));
  } catch { return; /* no aio accounting to ask: io_setup will say */ }
  if (used + need > max) {
    throw new TsnapError('restoreFailed', `the image's ${rings.length} aio ring(s) need ${need} of fs.aio-max-nr (${max}), ${used} are in use; raise it (sysctl fs.aio-max-nr) or end other aio users`);
  }
}

/**
 * Rebuilds one ring inside the task and moves it to its old address, which
 * must be free (mapVmas leaves aio rings out).
 */
export function restoreAioRing(rt: RemoteTask, r: AioRingImage): void {
  const len = r.end - r.start;
  const want = header(r.ring);
  const at = `the aio ring at 0x${r.start.toString(16)}`;
  const ctxAt = rt.put(Buffer.alloc(8));
  rt.sc.check(`io_setup(${requestsFor(len)}) for ${at}`, SYS.io_setup, requestsFor(len), ctxAt);
  const ctx = Number(rt.get(8).readBigUInt64LE(0));
  const got = Buffer.alloc(HEADER);
  rt.mem.read(got, 0, HEADER, ctx);
  const now = header(got);
  if (now.nr !== want.nr) {
    throw new TsnapError('restoreFailed', `${at}: io_setup made a ring of ${now.nr} events, the image's has ${want.nr} (another number of CPUs?)`);
  }
  advanceTail(rt, ctx, want, at);
  // The events, whatever their state: those between head and tail are the program's to reap.
  rt.mem.write(r.ring, HEADER, len - HEADER, ctx + HEADER);
  const moved = Number(rt.sc.check(`mremap(${at})`, SYS.mremap, ctx, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, r.start));
  if (moved !== r.start) throw new TsnapError('restoreFailed', `${at}: mremap landed at 0x${moved.toString(16)}`);
}

/**
 * The kernel's tail moves only by completions: as many writes to /dev/null
 * as the ring had completed (modulo its size, a full turn first when it
 * wrapped), head moved along so the ring never fills, and left where the
 * program had it.
 */
function advanceTail(rt: RemoteTask, ctx: number, want: Ring, at: string): void {
  if (want.head === 0 && want.tail === 0) return;
  const count = want.tail >= want.head ? want.tail : want.nr + want.tail;
  const devnull = rt.open('/dev/null', O_WRONLY);
  try {
    // Scratch: the iocb, one byte to write, then the pointer array.
    const iocb = Buffer.alloc(IOCB_SIZE);
    const iocbAt = rt.scratch + 64;
    iocb.writeUInt16LE(IOCB_CMD_PWRITE, 16);
    iocb.writeUInt32LE(devnull, 20);
    iocb.writeBigUInt64LE(BigInt(rt.scratch + 128), 24);
    iocb.writeBigUInt64LE(1n, 32);
    rt.put(iocb, 64);
    const batch = Math.min(want.nr - 1, Math.floor((rt.scratchSize - 256) / 8));
    const ptrs = Buffer.alloc(batch * 8);
    for (let i = 0; i < batch; i++) ptrs.writeBigUInt64LE(BigInt(iocbAt), i * 8);
    const ptrsAt = rt.put(ptrs, 256);
    const head = Buffer.alloc(4);
    for (let done = 0; done < count;) {
      const n = Number(rt.sc.check(`io_submit(${at})`, SYS.io_submit, ctx, Math.min(batch, count - done), ptrsAt));
      if (n <= 0) throw new TsnapError('restoreFailed', `${at}: io_submit took no request`);
      done += n;
      // Reaping by hand: the kernel reads head from the ring.
      head.writeUInt32LE(Math.min(done, want.head) % want.nr, 0);
      rt.mem.write(head, 0, 4, ctx + 8);
    }
    const got = Buffer.alloc(HEADER);
    rt.mem.read(got, 0, HEADER, ctx);
    const h = header(got);
    if (h.tail !== want.tail || h.head !== want.head) {
      throw new TsnapError('restoreFailed', `${at}: head/tail came back as ${h.head}/${h.tail}, the image's ${want.head}/${want.tail}`);
    }
  } finally {
    rt.close(devnull);
  }
}

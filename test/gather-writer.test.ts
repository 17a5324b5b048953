/**
 * GatherWriter (src/sys/memory.ts), the chain fill's writer, against a live
 * process: pieces of several buffers in any interleaving land at their
 * addresses, pieces side by side share one remote iovec, lists longer than
 * IOV_MAX are split, and a piece the target cannot take stops the write at
 * its address.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { compileC, startProcess, useProcessCleanup, cleanupTmpDirs, parseHex } from './helpers/fixtures.js';
import { GatherWriter, ProcMem, VmCopier } from '../src/sys/index.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());
const P = 4096;
const PAGES = 2100;

/** Three "levels": page i comes from buffer i % 3, at page floor(i / 3) of it, each page filled with its own number. */
function levels(): Buffer[] {
  const bufs = [0, 1, 2].map(() => Buffer.alloc(Math.ceil(PAGES / 3) * P));
  for (let i = 0; i < PAGES; i++) bufs[i % 3].fill(i % 251, Math.floor(i / 3) * P, Math.floor(i / 3) * P + P);
  return bufs;
}

describe('GatherWriter', () => {
  it('writes interleaved pieces of several buffers; adjacent pieces are one remote range, more than IOV_MAX local pieces split into calls', async () => {
    const p = await startProcess(await compileC('dirtier'), [String(PAGES)]);
    const addr = parseHex(p.readyInfo.addr);
    const bufs = levels();
    const base = bufs.map((b) => GatherWriter.addressOf(b));
    const w = new GatherWriter(p.pid);
    const calls0 = VmCopier.writeCalls;
    for (let i = 0; i < PAGES; i++) w.add(base[i % 3] + Math.floor(i / 3) * P, addr + i * P, P);
    expect(w.finish()).toBeNull();
    expect(w.written).toBe(PAGES * P);
    // 2100 local pieces (no two side by side locally), one remote range: ceil(2100 / 1024) calls.
    expect(VmCopier.writeCalls - calls0).toBe(3);
    const mem = new ProcMem(p.pid);
    const got = Buffer.alloc(PAGES * P);
    mem.read(got, 0, got.length, addr);
    mem.close();
    for (let i = 0; i < PAGES; i++) {
      expect(got[i * P]).toBe(i % 251);
      expect(got[i * P + P - 1]).toBe(i % 251);
    }
    // Pieces contiguous on both sides are one iovec pair: one call for all of it.
    const one = new GatherWriter(p.pid);
    const calls1 = VmCopier.writeCalls;
    for (let i = 0; i < PAGES / 3; i++) one.add(base[0] + i * P, addr + i * P, P);
    expect(one.finish()).toBeNull();
    expect(VmCopier.writeCalls - calls1).toBe(1);
  });

  it('stops at the first piece the target cannot take and says where', async () => {
    const p = await startProcess(await compileC('dirtier'), ['4']);
    const addr = parseHex(p.readyInfo.addr);
    const src = Buffer.alloc(3 * P, 0x5a);
    const base = GatherWriter.addressOf(src);
    const w = new GatherWriter(p.pid);
    w.add(base, addr, P);
    // Page 1 of the NULL page's neighbourhood: never mapped (mmap_min_addr).
    w.add(base + P, 0x1000, P);
    w.add(base + 2 * P, addr + P, P);
    expect(w.finish()).toBe(0x1000);
    expect(w.written).toBe(P);
    // Nothing more is sent once a write failed.
    w.add(base, addr + 2 * P, P);
    expect(w.finish()).toBe(0x1000);
    const mem = new ProcMem(p.pid);
    const got = Buffer.alloc(2 * P);
    mem.read(got, 0, got.length, addr);
    mem.close();
    expect(got[0]).toBe(0x5a);
    expect(got[P]).not.toBe(0x5a);
  });
});

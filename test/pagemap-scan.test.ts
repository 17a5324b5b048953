/** PAGEMAP_SCAN on the real kernel: partial vectors, max_pages and walk_end. */
import { describe, it, expect } from 'vitest';
import { startPython, useProcessCleanup, parseHex } from './helpers/fixtures.js';
import { Pagemap, PAGE_IS } from '../src/sys/index.js';

useProcessCleanup();

const P = 4096;

describe('PAGEMAP_SCAN', () => {
  it('any vector size gives the same ranges; max_pages cuts exactly', async () => {
    const p = await startPython([
      'import mmap, ctypes, sys',
      'm = mmap.mmap(-1, 64 << 20)',
      'for i in range(0, 512, 3): m[i * 4096] = 1',
      'for i in range(1000, 1100): m[i * 4096] = 2',
      'addr = ctypes.addressof(ctypes.c_char.from_buffer(m))',
      'print("READY addr=0x%x" % addr, flush=True)',
      'sys.stdin.readline()',
    ].join('\n'));
    const addr = parseHex(p.readyInfo.addr);
    const pm = new Pagemap(p.pid);
    const q = { start: addr, end: addr + (64 << 20), categoryAnyof: PAGE_IS.PRESENT | PAGE_IS.SWAPPED, returnMask: PAGE_IS.PRESENT | PAGE_IS.SWAPPED | PAGE_IS.FILE | PAGE_IS.PFNZERO };
    try {
      const pages = (regions: { start: number; end: number }[]) => regions.flatMap((r) => Array.from({ length: (r.end - r.start) / P }, (_, i) => (r.start - addr) / P + i));
      const full = [...pm.scan(q, 4096)].flat();
      const want = [...Array.from({ length: 171 }, (_, i) => i * 3), ...Array.from({ length: 100 }, (_, i) => 1000 + i)];
      expect(pages(full)).toEqual(want);
      for (const vec of [1, 2, 7]) expect([...pm.scan(q, vec)].flat()).toEqual(full);
      const ten = [...pm.scan({ ...q, maxPages: 10 }, 4096)].flat();
      expect(pages(ten)).toEqual(want.slice(0, 10));
      const cut = [...pm.scan({ ...q, maxPages: 175 }, 3)].flat();
      expect(pages(cut)).toEqual(want.slice(0, 175)); // cuts inside the 1000..1100 run
    } finally {
      pm.close();
    }
  });
});

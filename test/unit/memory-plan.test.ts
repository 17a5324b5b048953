/** classifyVma and RangeSelector: which pages of which VMAs go into an image. */
import { describe, it, expect, afterEach } from 'vitest';
import fc from 'fast-check';
import { spawn, type ChildProcess } from 'node:child_process';
import { classifyVma, specialOf, RangeSelector, SCAN_ANYOF, SCAN_RETURN, type VmaClass, type DumpRange } from '../../src/dump/memory-plan.js';
import { parseMaps, readMaps, type Vma } from '../../src/proc/maps.js';
import { PAGE_IS } from '../../src/sys/uapi.js';
import type { PageRegion } from '../../src/sys/pagemap-scan.js';

const PAGE = 4096;
const NUM_RUNS = 200;

function vmaOf(line: string): Vma {
  const v = parseMaps(line);
  expect(v).toHaveLength(1);
  return v[0];
}

describe('classifyVma', () => {
  const cases: [string, string, VmaClass][] = [
    ['vdso', '7ffd1e9f4000-7ffd1e9f6000 r-xp 00000000 00:00 0                          [vdso]', 'notDumped'],
    ['vvar', '7ffd1e9f0000-7ffd1e9f4000 r--p 00000000 00:00 0                          [vvar]', 'notDumped'],
    ['vvar_vclock', '7ffd1e9ee000-7ffd1e9f0000 r--p 00000000 00:00 0                          [vvar_vclock]', 'notDumped'],
    ['vsyscall', 'ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]', 'notDumped'],
    ['private anonymous', '7f2a3c000000-7f2a40000000 rw-p 00000000 00:00 0 ', 'private'],
    ['private anonymous, no trailing padding', '7f2a3c000000-7f2a40000000 rw-p 00000000 00:00 0', 'private'],
    ['named anonymous', '7f2a3c000000-7f2a3c100000 rw-p 00000000 00:00 0                          [anon:buf]', 'private'],
    ['heap', '55d0c1a4e000-55d0c1a6f000 rw-p 00000000 00:00 0                          [heap]', 'private'],
    ['stack', '7ffd1e8d2000-7ffd1e8f3000 rw-p 00000000 00:00 0                          [stack]', 'private'],
    ['private file mapping (text)', '7f2a41028000-7f2a4117d000 r-xp 00028000 fe:01 1835057                    /usr/lib/x86_64-linux-gnu/libc.so.6', 'private'],
    ['private file mapping (data)', '7f2a411d3000-7f2a411d7000 rw-p 001d2000 fe:01 1835057                    /usr/lib/x86_64-linux-gnu/libc.so.6', 'private'],
    ['private mapping of a deleted file', '7f2a41000000-7f2a41001000 rw-p 00000000 fe:01 42                    /tmp/gone (deleted)', 'private'],
    ['MAP_SHARED anonymous', '7f2a3c000000-7f2a3c100000 rw-s 00000000 00:01 1064                       /dev/zero (deleted)', 'sharedAnon'],
    ['shared file mapping', '7f2a3c000000-7f2a3c100000 rw-s 00000000 fe:01 1234                       /var/lib/data.bin', 'notDumped'],
    ['shared mapping of a deleted file', '7f2a3c000000-7f2a3c100000 rw-s 00000000 fe:01 1234                       /var/lib/data.bin (deleted)', 'notDumped'],
    ['shared mapping of the real /dev/zero (not deleted)', '7f2a3c000000-7f2a3c100000 rw-s 00000000 00:05 4                       /dev/zero', 'notDumped'],
    ['read-only shared file mapping', '7f2a3c000000-7f2a3c100000 r--s 00000000 fe:01 77                       /usr/share/locale/x.mo', 'notDumped'],
  ];
  for (const [name, line, want] of cases) {
    it(`${name} -> ${want}`, () => {
      expect(classifyVma(vmaOf(line))).toBe(want);
    });
  }

  it('specialOf names the kernel areas', () => {
    expect(specialOf(vmaOf(cases[0][1]))).toBe('vdso');
    expect(specialOf(vmaOf(cases[2][1]))).toBe('vvar_vclock');
    expect(specialOf(vmaOf(cases[7][1]))).toBe('heap');
    expect(specialOf(vmaOf(cases[8][1]))).toBe('stack');
    expect(specialOf(vmaOf(cases[4][1]))).toBeNull();
  });

  it('the scan asks for present or swapped pages and returns what the filter needs', () => {
    expect(SCAN_ANYOF).toBe(PAGE_IS.PRESENT | PAGE_IS.SWAPPED);
    expect(SCAN_RETURN & PAGE_IS.FILE).toBe(PAGE_IS.FILE);
    expect(SCAN_RETURN & PAGE_IS.PFNZERO).toBe(PAGE_IS.PFNZERO);
  });
});

describe('classifyVma on a live process', () => {
  let child: ChildProcess | null = null;
  let pyPid = 0;
  afterEach(() => {
    for (const pid of [pyPid, child?.pid ?? 0]) {
      if (pid > 0) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
    child = null;
    pyPid = 0;
  });

  it('MAP_SHARED|MAP_ANONYMOUS is sharedAnon, MAP_PRIVATE|MAP_ANONYMOUS is private', async () => {
    const py = `
import mmap, ctypes, os, sys
p = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
s = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
a = ctypes.addressof(ctypes.c_char.from_buffer(p))
b = ctypes.addressof(ctypes.c_char.from_buffer(s))
sys.stdout.write("%d %d %d\\n" % (os.getpid(), a, b))
sys.stdout.flush()
sys.stdin.read()
`;
    child = spawn('python3', ['-c', py], { stdio: ['pipe', 'pipe', 'inherit'] });
    const c = child;
    const line = await new Promise<string>((resolve, reject) => {
      let buf = '';
      c.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        const nl = buf.indexOf('\n');
        if (nl >= 0) resolve(buf.slice(0, nl));
      });
      c.on('error', reject);
      c.on('exit', (code) => reject(new Error(`python3 exited (${code})`)));
    });
    const [pid, priv, shared] = line.trim().split(' ').map(Number);
    pyPid = pid;
    const vmas = readMaps(pid);
    const find = (addr: number) => vmas.find((v) => v.start <= addr && addr < v.end)!;
    const sv = find(shared);
    expect(sv.shared).toBe(true);
    expect(sv.path).toBe('/dev/zero');
    expect(sv.deleted).toBe(true);
    expect(classifyVma(sv)).toBe('sharedAnon');
    expect(classifyVma(find(priv))).toBe('private');
    for (const v of vmas) {
      if (['[vdso]', '[vvar]', '[vvar_vclock]', '[vsyscall]'].includes(v.path)) expect(classifyVma(v)).toBe('notDumped');
      if (v.path === '[heap]' || v.path === '[stack]') expect(classifyVma(v)).toBe('private');
    }
  });
});

// ---------------------------------------------------------------------------
// RangeSelector against a per-page reference

function mkVma(start: number, end: number): Vma {
  return { start, end, prot: 3, shared: false, offset: 0, devMajor: 0, devMinor: 0, inode: 0, path: '', deleted: false };
}

function keepsPage(cls: VmaClass, cats: number): boolean {
  if (cats & PAGE_IS.PFNZERO) return false;
  switch (cls) {
    case 'private': return (cats & PAGE_IS.FILE) === 0;
    // Taken from the shared object itself (dump/shared-memory.ts), never from a process's pagemap.
    case 'sharedAnon': return false;
    case 'notDumped': return false;
  }
}

interface Plan {
  vmas: Vma[];
  classes: VmaClass[];
  regions: PageRegion[];
  /** Sizes of the batches the regions are handed to select() in. */
  batchSizes: number[];
}

const CLASSES: VmaClass[] = ['private', 'sharedAnon', 'notDumped'];
const CATS = [
  PAGE_IS.PRESENT,
  PAGE_IS.SWAPPED,
  PAGE_IS.PRESENT | PAGE_IS.FILE,
  PAGE_IS.SWAPPED | PAGE_IS.FILE,
  PAGE_IS.PRESENT | PAGE_IS.PFNZERO,
  PAGE_IS.PRESENT | PAGE_IS.FILE | PAGE_IS.PFNZERO,
];

const planArb: fc.Arbitrary<Plan> = fc
  .record({
    base: fc.integer({ min: 0, max: 1 << 24 }),
    vmaSegs: fc.array(
      fc.record({ gap: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 6 })), len: fc.integer({ min: 1, max: 10 }), cls: fc.constantFrom(...CLASSES) }),
      { maxLength: 12 },
    ),
    regSegs: fc.array(
      fc.record({ gap: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 8 })), len: fc.integer({ min: 1, max: 25 }), cat: fc.constantFrom(...CATS) }),
      { maxLength: 20 },
    ),
    regionLead: fc.integer({ min: 0, max: 8 }),
    batchSizes: fc.array(fc.integer({ min: 1, max: 5 }), { maxLength: 10 }),
  })
  .map(({ base, vmaSegs, regSegs, regionLead, batchSizes }) => {
    const vmas: Vma[] = [];
    const classes: VmaClass[] = [];
    let p = base;
    for (const s of vmaSegs) {
      p += s.gap;
      vmas.push(mkVma(p * PAGE, (p + s.len) * PAGE));
      classes.push(s.cls);
      p += s.len;
    }
    // Regions start before the first VMA may, and run past the last one.
    const regions: PageRegion[] = [];
    let q = Math.max(0, base - regionLead);
    for (const s of regSegs) {
      q += s.gap;
      regions.push({ start: q * PAGE, end: (q + s.len) * PAGE, categories: s.cat });
      q += s.len;
    }
    return { vmas, classes, regions, batchSizes };
  });

/** Per page: the (page, vma) pairs a correct selector yields. */
function referencePages(plan: Plan): string[] {
  const out: string[] = [];
  for (const r of plan.regions) {
    for (let a = r.start; a < r.end; a += PAGE) {
      const vi = plan.vmas.findIndex((v) => v.start <= a && a < v.end);
      if (vi < 0) continue;
      if (keepsPage(plan.classes[vi], r.categories)) out.push(`${a}:${vi}`);
    }
  }
  return out;
}

function runSelector(plan: Plan): DumpRange[] {
  const sel = new RangeSelector(plan.vmas, plan.classes);
  const out: DumpRange[] = [];
  let i = 0;
  let b = 0;
  while (i < plan.regions.length) {
    const n = plan.batchSizes.length ? plan.batchSizes[b++ % plan.batchSizes.length] : plan.regions.length;
    out.push(...sel.select(plan.regions.slice(i, i + n)));
    i += n;
  }
  return out;
}

describe('RangeSelector', () => {
  it('selects exactly the pages the per-page rule keeps, sorted, one VMA per range', () => {
    fc.assert(
      fc.property(planArb, (plan) => {
        const got = runSelector(plan);
        const pages: string[] = [];
        for (let k = 0; k < got.length; k++) {
          const d = got[k];
          expect(d.start).toBeLessThan(d.end);
          expect(d.start % PAGE).toBe(0);
          expect(d.end % PAGE).toBe(0);
          const v = plan.vmas[d.vma];
          expect(v).toBeDefined();
          expect(d.start).toBeGreaterThanOrEqual(v.start);
          expect(d.end).toBeLessThanOrEqual(v.end);
          if (k > 0) {
            expect(got[k - 1].end).toBeLessThanOrEqual(d.start);
            expect(got[k - 1].vma).toBeLessThanOrEqual(d.vma);
          }
          for (let a = d.start; a < d.end; a += PAGE) pages.push(`${a}:${d.vma}`);
        }
        expect(pages).toEqual(referencePages(plan));
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it('the same ranges whether regions arrive in one batch or one at a time', () => {
    fc.assert(
      fc.property(planArb, (plan) => {
        const whole = runSelector({ ...plan, batchSizes: [] });
        const single = runSelector({ ...plan, batchSizes: [1] });
        expect(single).toEqual(whole);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it('a region spanning a gap and two VMAs is split at each VMA boundary', () => {
    const vmas = [mkVma(0x10000, 0x14000), mkVma(0x14000, 0x16000), mkVma(0x20000, 0x22000)];
    const sel = new RangeSelector(vmas, ['private', 'private', 'private']);
    const got = [...sel.select([{ start: 0x8000, end: 0x30000, categories: PAGE_IS.PRESENT }])];
    expect(got).toEqual([
      { start: 0x10000, end: 0x14000, vma: 0 },
      { start: 0x14000, end: 0x16000, vma: 1 },
      { start: 0x20000, end: 0x22000, vma: 2 },
    ]);
    // A shared anonymous VMA takes nothing from the pagemap.
    const shared = new RangeSelector(vmas, ['private', 'sharedAnon', 'private']);
    expect([...shared.select([{ start: 0x8000, end: 0x30000, categories: PAGE_IS.PRESENT }])].map((r) => r.vma)).toEqual([0, 2]);
  });

  it('private keeps anonymous but not file or zero pages; notDumped keeps nothing', () => {
    const vmas = [mkVma(0x10000, 0x20000), mkVma(0x20000, 0x30000)];
    const sel = new RangeSelector(vmas, ['private', 'notDumped']);
    const got = [
      ...sel.select([
        { start: 0x10000, end: 0x11000, categories: PAGE_IS.PRESENT },
        { start: 0x11000, end: 0x12000, categories: PAGE_IS.PRESENT | PAGE_IS.FILE },
        { start: 0x12000, end: 0x13000, categories: PAGE_IS.PRESENT | PAGE_IS.PFNZERO },
        { start: 0x13000, end: 0x14000, categories: PAGE_IS.SWAPPED },
        { start: 0x1f000, end: 0x30000, categories: PAGE_IS.PRESENT },
      ]),
    ];
    expect(got).toEqual([
      { start: 0x10000, end: 0x11000, vma: 0 },
      { start: 0x13000, end: 0x14000, vma: 0 },
      { start: 0x1f000, end: 0x20000, vma: 0 },
    ]);
  });

  it('no VMAs: nothing selected', () => {
    const sel = new RangeSelector([], []);
    expect([...sel.select([{ start: 0, end: 0x10000, categories: PAGE_IS.PRESENT }])]).toEqual([]);
  });
});

/**
 * scanPieces: scans of anonymous VMAs ask without PAGE_IS_FILE (the costly
 * category) and must still see exactly what a scan with it sees.
 */
import { describe, it, expect, afterEach } from 'vitest';
import fc from 'fast-check';
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { scanPieces, SCAN_ANYOF, SCAN_RETURN, SCAN_NOT_GUARD } from '../../src/dump/memory-plan.js';
import { readMaps, type Vma } from '../../src/proc/maps.js';
import { Pagemap, type PageRegion } from '../../src/sys/pagemap-scan.js';
import { PAGE_IS } from '../../src/sys/uapi.js';
import { normalize } from '../../src/image/ranges.js';
import { killPid } from '../helpers/processes.js';

const PAGE = 4096;

function vma(start: number, end: number, kind: number): Vma {
  const [inode, path] = ([[7, '/f'], [0, ''], [0, '[heap]'], [0, '[vdso]']] as const)[kind];
  return { start, end, prot: 3, shared: false, offset: 0, devMajor: 0, devMinor: 0, inode, path, deleted: false };
}

describe('scanPieces', () => {
  it('covers exactly the spans, in order, and drops FILE only over VMAs without a file', () => {
    const world = fc.array(fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 1, max: 4 }), fc.integer({ min: 0, max: 3 })), { minLength: 1, maxLength: 12 });
    const spansOf = fc.array(fc.tuple(fc.integer({ min: 0, max: 80 }), fc.integer({ min: 1, max: 20 })), { minLength: 1, maxLength: 5 });
    fc.assert(fc.property(world, spansOf, (ws, ss) => {
      const vmas: Vma[] = [];
      let at = 0x10000;
      for (const [gap, len, kind] of ws) {
        at += gap * PAGE;
        vmas.push(vma(at, at + len * PAGE, kind));
        at += len * PAGE;
      }
      const over = normalize(ss.map(([s, l]) => ({ start: 0x10000 + s * PAGE, end: 0x10000 + (s + l) * PAGE })));
      const pieces = scanPieces(vmas, over, SCAN_RETURN);
      // Same coverage.
      expect(normalize(pieces.map((p) => ({ start: p.start, end: p.end })))).toEqual(over);
      for (let i = 1; i < pieces.length; i++) expect(pieces[i].start).toBeGreaterThanOrEqual(pieces[i - 1].end);
      // Per page: no FILE exactly where an inode-0 VMA lies.
      for (const p of pieces) {
        for (let a = p.start; a < p.end; a += PAGE) {
          const v = vmas.find((x) => x.start <= a && a < x.end);
          expect(p.returnMask).toBe(v && v.inode === 0 && v.path !== '[vdso]' ? SCAN_RETURN & ~PAGE_IS.FILE : SCAN_RETURN);
        }
      }
    }), { numRuns: 200 });
  });
});

describe('scanPieces on a live process', () => {
  let child: ChildProcess | null = null;
  let dir = '';
  afterEach(async () => {
    // Waited for: a python still dying when the test ends is named as left behind.
    if (child?.pid) await killPid(child.pid);
    child = null;
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = '';
  });

  it('returns the regions a scan with FILE everywhere returns (file pages, copy-on-write pages, anonymous, zero page)', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tsnap-pieces-'));
    const file = join(dir, 'data');
    writeFileSync(file, Buffer.alloc(64 * PAGE, 7));
    // A private file mapping read in part and written in part (page-cache
    // pages next to copy-on-write ones), anonymous memory written in part
    // and read in part (the zero page).
    const py = `
import mmap, os, sys
f = open(${JSON.stringify(file)}, 'r+b')
m = mmap.mmap(f.fileno(), 64 * 4096, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
for i in range(0, 64, 3): x = m[i * 4096]
for i in range(0, 64, 5): m[i * 4096] = 1
a = mmap.mmap(-1, 256 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(0, 256, 2): a[i * 4096] = 1
for i in range(1, 256, 4): x = a[i * 4096]
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.read()
`;
    child = spawn('python3', ['-c', py], { stdio: ['pipe', 'pipe', 'inherit'] });
    const c = child;
    await new Promise<void>((resolve, reject) => {
      c.stdout!.once('data', () => resolve());
      c.once('exit', (code) => reject(new Error(`python3 exited (${code})`)));
    });
    const pid = c.pid!;
    const vmas = readMaps(pid).filter((v) => v.end <= 2 ** 47);
    expect(vmas.some((v) => v.inode === 0) && vmas.some((v) => v.inode !== 0)).toBe(true);
    const over = normalize(vmas.map((v) => ({ start: v.start, end: v.end })));
    const pm = new Pagemap(pid);
    try {
      const query = (start: number, end: number, returnMask: number) => ({ start, end, categoryMask: SCAN_NOT_GUARD, categoryInverted: SCAN_NOT_GUARD, categoryAnyof: SCAN_ANYOF, returnMask });
      const mask = SCAN_RETURN | PAGE_IS.WRITTEN;
      process.kill(pid, 'SIGSTOP');
      let full: PageRegion[];
      let pieced: PageRegion[];
      try {
        full = over.flatMap((s) => [...pm.scan(query(s.start, s.end, mask))].flat());
        pieced = scanPieces(vmas, over, mask).flatMap((p) => [...pm.scan(query(p.start, p.end, p.returnMask))].flat());
      } finally {
        process.kill(pid, 'SIGCONT');
      }
      const joined = (rs: PageRegion[]) => rs.reduce<PageRegion[]>((out, r) => {
        const last = out[out.length - 1];
        if (last && last.end === r.start && last.categories === r.categories) last.end = r.end;
        else out.push({ ...r });
        return out;
      }, []);
      expect(full.some((r) => r.categories & PAGE_IS.FILE)).toBe(true);
      expect(full.some((r) => r.categories & PAGE_IS.PFNZERO)).toBe(true);
      expect(joined(pieced)).toEqual(joined(full));
    } finally {
      pm.close();
    }
  });
});

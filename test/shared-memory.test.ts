/**
 * MAP_SHARED anonymous memory that only a child wrote (a prefork server's
 * workers fill pages their parent never touches): every page of the shared
 * object comes back, in a plain tree dump and in a pre-dump chain where
 * the child keeps writing between rounds, as the parent reads it itself
 * after restore; and it is still shared (a write by one is seen by the other).
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, restoreDetached, readImage, storedPageSet } from './helpers/tsnap.js';
import { waitPidsFree } from './helpers/processes.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

/**
 * The parent maps 64 pages shared and never touches them; its child writes
 * pages on request ("fill N": page i gets byte (i*7+N) for the first N*4
 * pages). "sum" makes the parent (not the child) read every page and print
 * its crc; "poke" makes the child write one byte that the parent then sees.
 */
const PROGRAM = `
import mmap, os, sys, zlib
os.closerange(3, 256)
PAGES = 64
m = mmap.mmap(-1, PAGES * 4096, mmap.MAP_SHARED)
r, w = os.pipe()
ack_r, ack_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    os.close(ack_r)
    f = os.fdopen(r, 'r')
    for line in f:
        cmd = line.split()
        if cmd[0] == 'fill':
            n = int(cmd[1])
            for i in range(n * 4):
                m[i * 4096:(i + 1) * 4096] = bytes([(i * 7 + n) & 255]) * 4096
        elif cmd[0] == 'poke':
            m[PAGES * 4096 - 1] = 0x77
        os.write(ack_w, b'k')       # written: DONE may be said
    os._exit(0)
os.close(r)
os.close(ack_w)
out = os.fdopen(w, 'w')
print('READY', pid, flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] in ('fill', 'poke'):
        out.write(line); out.flush()
        os.read(ack_r, 1)           # the child's word, not a nap: a loaded machine may not run it for a while
        print('DONE', flush=True)
    elif cmd[0] == 'sum':
        print('SUM %08x %d' % (zlib.crc32(m[:]), m[PAGES * 4096 - 1]), flush=True)
`;

describe('shared anonymous memory', () => {
  for (const chain of [false, true]) {
    it(`pages only a child wrote come back ${chain ? 'through a pre-dump chain' : 'from a tree dump'}`, async () => {
      const p = await startPython(PROGRAM);
      const work = tmpDir('sharedmem');
      const step = async (cmd: string) => { const at = p.lines().length; p.writeLine(cmd); await p.waitForLine(/^DONE/, 5000, at); };
      await step('fill 3');
      let dir = join(work, 'img');
      const n = chain ? 9 : 5;
      if (chain) {
        expect((await tsnap('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'), '--tree')).code).toBe(0);
        // Written after the first round, by the child only.
        await step('fill 9');
        dir = join(work, '2');
        const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree', '--parent', join(work, '1'));
        expect(d.code, d.stderr).toBe(0);
      } else {
        await step('fill 5');
        const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree');
        expect(d.code, d.stderr).toBe(0);
      }
      // What the memory held at the dump, computed the same way.
      const expected = Buffer.alloc(64 * 4096);
      for (let i = 0; i < n * 4; i++) expected.fill((i * 7 + n) & 255, i * 4096, (i + 1) * 4096);
      if (!chain) for (let i = n * 4; i < 12; i++) expected.fill((i * 7 + 3) & 255, i * 4096, (i + 1) * 4096);
      const { crc32 } = await import('node:zlib');
      const want = `SUM ${(crc32(expected) >>> 0).toString(16).padStart(8, '0')} 0`;
      await p.exited;
      const child = Number(p.readyLine.split(' ')[1]);
      await waitPidsFree([child]);
      // Stored once, by the parent (restore fills the object from it and maps it in the child).
      const images = [p.pid, child].map((pid) => readImage(join(dir, String(pid))));
      const vmaOf = (i: number) => images[i].process!.mm.vmas.find((v) => v.shared && v.path === '/dev/zero')!;
      const inVma = (i: number) => [...storedPageSet(images[i])].filter((a) => a >= vmaOf(i).start && a < vmaOf(i).end).length;
      expect(inVma(0)).toBe(n * 4);
      expect(vmaOf(1).dumped).toBe(false);
      expect(inVma(1)).toBe(0);
      if (chain) {
        // Each pre-dump round stores it once too (a migration sends every round's).
        const round1 = [p.pid, child].map((pid) => readImage(join(work, '1', String(pid))));
        const inRound1 = (i: number) => [...storedPageSet(round1[i])].filter((a) => a >= vmaOf(i).start && a < vmaOf(i).end).length;
        expect(inRound1(0)).toBe(12);
        expect(inRound1(1)).toBe(0);
      }
      const r = await restoreDetached(dir, join(work, 'pid'));
      expect(r.result.code, r.result.stderr).toBe(0);
      r.writeLine('sum');
      expect(await r.waitForLine(/^SUM/)).toBe(want);
      // Still one object: the child's write shows in the parent.
      r.writeLine('poke');
      await r.waitForLine(/^DONE/);
      const at = r.lines.length;
      r.writeLine('sum');
      expect(await r.waitForLine(/^SUM/, 5000, at)).toMatch(/ 119$/);
    });
  }
});

/**
 * The page fill on chains whose levels overlap (src/restore/page-filler.ts):
 * the restored process checks every page itself; a damaged chunk is refused
 * whether its damaged bytes are used or replaced by a newer level, by every
 * fill a chain can take (by address from buffers or from mappings, by chunk).
 */
import { describe, it, expect, afterAll } from 'vitest';
import { cpSync, openSync, readSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs, parseHex, type Running } from './helpers/fixtures.js';
import { tsnap, restoreDetached, readImage } from './helpers/tsnap.js';
import { ExitCode } from '../src/errors.js';
import { HEADER_SIZE, PageWhere } from '../formats/schema.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());
const P = 4096;
/** 8 MiB: more chunks than a fill reads on tsnap's own thread (SYNC_CHUNKS). */
const PAGES = 2048;

async function cmd(p: Running, line: string): Promise<void> {
  const n = p.lines().length;
  p.writeLine(line);
  await p.waitForLine(/^DONE/, 10_000, n);
}

async function ok(...args: string[]): Promise<void> {
  const r = await tsnap(...args);
  expect(r.code, r.stderr).toBe(0);
}

/** Pre-dump, pre-dump, dump; level 2 rewrites every 5th page and pages 300-599, level 3 every 7th and 500-899 (over level 2's). */
async function overlappingChain(compress: 'none' | 'lz4' = 'none'): Promise<{ work: string; addr: number }> {
  const work = tmpDir('tsnap-chain-fill-');
  const p = await startProcess(await compileC('dirtier'), [String(PAGES)]);
  const addr = parseHex(p.readyInfo.addr);
  const pages = (pred: (i: number) => boolean) => Array.from({ length: PAGES }, (_, i) => i).filter(pred).join(' ');
  const c = ['--compress', compress];
  await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'), ...c);
  await cmd(p, `w ${pages((i) => i % 5 === 1 || (i >= 300 && i < 600))}`);
  await ok('pre-dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--parent', join(work, '1'), ...c);
  await cmd(p, `w ${pages((i) => i % 7 === 2 || (i >= 500 && i < 900))}`);
  await ok('dump', '--pid', String(p.pid), '--dir', join(work, '3'), '--parent', join(work, '2'), ...c);
  await p.exited;
  return { work, addr };
}

/** Restores `dir` under a new pid; the process checks every page. */
async function restoredChecks(dir: string, pidfile: string, env?: Record<string, string>): Promise<string> {
  const r = await restoreDetached(dir, pidfile, ['--new-pid'], { env });
  expect(r.result.code, r.result.stderr).toBe(0);
  r.writeLine('check');
  return r.waitForLine(/^(PASS|FAIL)/, 10_000);
}

/** Flips one byte of `level`'s stored copy of page `page` of the region. */
function damagePage(dir: string, addr: number, page: number): void {
  const img = readImage(dir);
  const at = addr + page * P;
  const run = img.pagemap.runs.find((r) => r.where === PageWhere.Here && r.start <= at && at < r.start + r.pages * P);
  if (!run) throw new Error(`${dir} does not hold page ${page}`);
  const chunk = img.pagemap.chunks[run.chunk!];
  expect(chunk.codec).toBe('none');
  const pos = HEADER_SIZE + chunk.fileOffset + run.offset! + (at - run.start) + 100;
  const fd = openSync(join(dir, 'pages'), 'r+');
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, pos);
  b[0] ^= 0xff;
  writeSync(fd, b, 0, 1, pos);
  closeSync(fd);
}

describe('page fill of an overlapping chain', () => {
  it('restores the exact final memory, written by address (the default) or chunk by chunk', async () => {
    const { work } = await overlappingChain();
    expect(await restoredChecks(join(work, '3'), join(work, 'pid'))).toBe('PASS');
    expect(await restoredChecks(join(work, '3'), join(work, 'pid2'), { TSNAP_FILL_BY_CHUNK: '1' })).toBe('PASS');
    // By address from mappings of the pages files (the default above 16 MiB: the CRC as the bytes pass,
    // in two lanes; or every chunk's CRC ahead), and from buffers.
    expect(await restoredChecks(join(work, '3'), join(work, 'pid3'), { TSNAP_FILL_CHAIN_MAP: '1' })).toBe('PASS');
    expect(await restoredChecks(join(work, '3'), join(work, 'pid5'), { TSNAP_FILL_CHAIN_MAP: '1', TSNAP_FILL_CHAIN_FUSED: '0' })).toBe('PASS');
    expect(await restoredChecks(join(work, '3'), join(work, 'pid4'), { TSNAP_FILL_CHAIN_MAP: '0' })).toBe('PASS');
  });

  it('restores the exact final memory of an lz4 chain (decoded chunks held across windows)', async () => {
    const { work } = await overlappingChain('lz4');
    expect(readImage(join(work, '1')).pagemap.chunks.every((ch) => ch.codec === 'lz4')).toBe(true);
    expect(await restoredChecks(join(work, '3'), join(work, 'pid'))).toBe('PASS');
  });

  it('a damaged chunk is refused, whether its bad bytes are used or replaced by a newer level', async () => {
    const { work, addr } = await overlappingChain();
    // Page 2 is level 1's (used); page 1 level 2's, so level 1's copy is replaced but its chunk is read for pages 0 and 3.
    for (const [name, page] of [['used', 2], ['replaced', 1]] as const) {
      const copy = join(work, name);
      for (const l of ['1', '2', '3']) cpSync(join(work, l), join(copy, l), { recursive: true });
      damagePage(join(copy, '1'), addr, page);
      for (const env of [undefined, { TSNAP_FILL_BY_CHUNK: '1' }, { TSNAP_FILL_CHAIN_MAP: '1' }, { TSNAP_FILL_CHAIN_MAP: '1', TSNAP_FILL_CHAIN_FUSED: '0' }] as (Record<string, string> | undefined)[]) {
        const r = await restoreDetached(join(copy, '3'), join(copy, 'pid'), ['--new-pid'], { env });
        expect(r.result.code, r.result.stderr).toBe(ExitCode.badImage);
        expect(r.result.stderr).toMatch(/pages: chunk \d+ checksum mismatch/);
      }
    }
  });
});

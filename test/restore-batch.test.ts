/**
 * The address-space setup runs as syscall lists in one remote step
 * (src/inject/remote-batch.ts), and a call failing in the middle of one
 * names itself and leaves nothing behind. Adjacent private anonymous VMAs
 * are one mmap split by mprotect (address-space.ts, AnonRun): 9000 VMAs of
 * alternating protections are one list of 4501 calls. Such a process file
 * is written with msgpackr records; one of plain maps restores the same.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { rmSync, statSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs, readProcMem, parseHex } from './helpers/fixtures.js';
import { tsnap, restoreDetached, killPid } from './helpers/tsnap.js';
import { waitPidsFree, leftRestoreHelpers } from './helpers/processes.js';
import { readMaps } from '../src/proc/index.js';
import { readMetaFile, writeMetaFile } from '../src/image/metadata.js';
import { FileKind, PROCESS_FLAG_RECORDS, type ProcessImage, type Inventory } from '../formats/schema.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const N = 4500; // 9000 single-page VMAs: two lists
const PAGE = 4096;

async function dumped(work: string): Promise<{ dir: string; pid: number; addr: number }> {
  const p = await startProcess(await compileC('manyvmas'), ['sleep', String(N)]);
  const addr = Number(parseHex(/addr=(0x[0-9a-f]+)/.exec(p.readyLine)![1]));
  const dir = join(work, 'img');
  const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
  expect(r.code, r.stderr).toBe(0);
  await p.exited;
  return { dir, pid: p.pid, addr };
}

describe('batched address-space setup', () => {
  it('thousands of VMAs come back with their contents and layout, in a few lists', async () => {
    const work = tmpDir('tsnap-batch-');
    const { dir, pid, addr } = await dumped(work);
    await waitPidsFree([pid]);
    const r = await restoreDetached(dir, join(work, 'pid'), ['--check', 'strict']);
    expect(r.result.code, r.result.stderr).toBe(0);
    try {
      expect(r.pid).toBe(pid);
      const maps = readMaps(pid).filter((v) => v.start >= addr && v.end <= addr + 2 * N * PAGE);
      expect(maps.length).toBe(2 * N);
      for (let i = 0; i < 2 * N; i += 97) {
        const page = readProcMem(pid, addr + i * PAGE, PAGE);
        expect(page.readBigUInt64LE(0)).toBe(BigInt(i));
        expect(page.readBigUInt64LE(PAGE - 8)).toBe(BigInt.asUintN(64, ~BigInt(i)));
        expect(maps[i].prot & 2).toBe(i % 2 === 0 ? 2 : 0);
      }
    } finally {
      await killPid(pid);
    }
  });

  it('a process file of plain msgpack maps (as written before records) restores as one with records', async () => {
    const work = tmpDir('tsnap-batch-');
    const { dir, pid, addr } = await dumped(work);
    const flagsOf = () => readFileSync(join(dir, 'process')).readUInt32LE(12);
    // Records (formats/image-v1.md "Records in the process file"): the header says so.
    expect(flagsOf() & PROCESS_FLAG_RECORDS).toBe(PROCESS_FLAG_RECORDS);
    const proc = readMetaFile<ProcessImage>(dir, FileKind.Process);
    rmSync(join(dir, 'process'));
    const inv = readMetaFile<Inventory>(dir, FileKind.Inventory);
    process.env.TSNAP_IMAGE_RECORDS = '0';
    try {
      inv.files.process = writeMetaFile(dir, FileKind.Process, proc);
    } finally {
      delete process.env.TSNAP_IMAGE_RECORDS;
    }
    rmSync(join(dir, 'inventory'));
    writeMetaFile(dir, FileKind.Inventory, inv);
    expect(flagsOf()).toBe(0);
    // One map per VMA: plain msgpack, no structure references (fixints 0x40-0x7f are numbers).
    expect(readMetaFile<ProcessImage>(dir, FileKind.Process)).toEqual(proc);
    await waitPidsFree([pid]);
    const r = await restoreDetached(dir, join(work, 'pid'), ['--check', 'strict']);
    expect(r.result.code, r.result.stderr).toBe(0);
    try {
      const maps = readMaps(pid).filter((v) => v.start >= addr && v.end <= addr + 2 * N * PAGE);
      expect(maps.length).toBe(2 * N);
      for (let i = 0; i < 2 * N; i += 211) {
        const page = readProcMem(pid, addr + i * PAGE, PAGE);
        expect(page.readBigUInt64LE(0)).toBe(BigInt(i));
        expect(maps[i].prot & 2).toBe(i % 2 === 0 ? 2 : 0);
      }
    } finally {
      await killPid(pid);
    }
  });

  it('a call failing in the middle of a list fails the restore naming the VMA and the call; nothing is left', async () => {
    const work = tmpDir('tsnap-batch-');
    const { dir, pid } = await dumped(work);
    // One VMA deep in the second list becomes a private mapping of a
    // directory: opening it works, its mmap fails with ENODEV, inside the list.
    const proc = readMetaFile<ProcessImage>(dir, FileKind.Process);
    const victim = proc.mm.vmas.filter((v) => v.file === null && !v.special)[2 * N - 300];
    const st = statSync(work);
    Object.assign(victim, {
      path: work, dumped: false, shared: false, pgoff: 0,
      file: { dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, devMajor: 0, devMinor: 0, deleted: false },
    });
    rmSync(join(dir, 'process'));
    const inv = readMetaFile<Inventory>(dir, FileKind.Inventory);
    inv.files.process = writeMetaFile(dir, FileKind.Process, proc);
    rmSync(join(dir, 'inventory'));
    writeMetaFile(dir, FileKind.Inventory, inv);
    const r = await tsnap('restore', '--dir', dir, '--detach');
    expect(r.code).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain(`remote mmap(0x${victim.start.toString(16)} ${work})`);
    expect(r.stderr).toContain('ENODEV');
    await waitPidsFree([pid]);
    expect(existsSync(`/proc/${pid}`)).toBe(false);
    expect(await leftRestoreHelpers()).toEqual([]);
  });
});

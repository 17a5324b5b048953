/**
 * The self-check's VmFlags read by the BPF task_vma iterator
 * (src/proc/vmflags-bpf.ts) give the table smaps gives, area for area, on
 * processes with every restored token, with a thread that has its own file
 * table, and with thousands of areas; and a restore checked that way finds
 * no difference where smaps finds none.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { readVmFlagMasks } from '../src/proc/smaps.js';
import { readVmFlagMasksBpf, unusable } from '../src/proc/vmflags-bpf.js';
import { VMA_RESTORED_FLAGS } from '../formats/schema.js';
import { tsnap } from './helpers/tsnap.js';
import { restore } from '../src/restore/restore.js';
import { kill, ptrace } from '../src/sys/index.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const TOKENS = Object.keys(VMA_RESTORED_FLAGS);

function same(pid: number): void {
  const bpf = readVmFlagMasksBpf(pid, TOKENS, 64);
  expect(bpf, `the iterator is not usable here: ${unusable}`).not.toBeNull();
  const smaps = readVmFlagMasks(pid, TOKENS, 64);
  expect(bpf!.count).toBe(smaps.count);
  expect([...bpf!.starts.subarray(0, bpf!.count)]).toEqual([...smaps.starts.subarray(0, smaps.count)]);
  expect([...bpf!.masks.subarray(0, bpf!.count)]).toEqual([...smaps.masks.subarray(0, smaps.count)]);
}

describe('VmFlags by the BPF VMA iterator', () => {
  it('every restored token, as smaps shows it', async () => {
    const p = await startProcess(await compileC('advised'), []);
    same(p.pid);
    // The fixture's tokens are really there (else equal tables prove little).
    const m = readVmFlagMasks(p.pid, TOKENS, 64);
    const seen = new Set<string>();
    for (let i = 0; i < m.count; i++) TOKENS.forEach((t, b) => { if (m.masks[i] & (1 << b)) seen.add(t); });
    for (const t of ['sr', 'rr', 'dc', 'dd', 'hg', 'nh', 'mg', 'wf', 'lo', 'nr', 'mw']) expect([...seen], t).toContain(t);
  });

  it('a thread with its own file table, and an mlock2(MLOCK_ONFAULT) area', async () => {
    const p = await startProcess(await compileC('vmathreads'), ['300']);
    same(p.pid);
  });

  it('thousands of areas', async () => {
    const p = await startProcess(await compileC('manyvmas'), ['pause', '3000']);
    same(p.pid);
  });

  it('a restore of 6 000 areas checked by the iterator: no difference', async () => {
    const p = await startProcess(await compileC('manyvmas'), ['pause', '3000']);
    const dir = join(tmpDir('vmflags-bpf'), 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const before = process.env.TSNAP_VMFLAGS_BPF;
    process.env.TSNAP_VMFLAGS_BPF = '1';
    try {
      const r = await restore({ dir, newPid: true, check: 'strict' });
      try {
        expect(r.warnings).toEqual([]);
      } finally {
        kill(r.pid, 9);
        try { ptrace.waitpidBlocking(r.pid); } catch { /* reaped */ }
      }
    } finally {
      if (before === undefined) delete process.env.TSNAP_VMFLAGS_BPF;
      else process.env.TSNAP_VMFLAGS_BPF = before;
    }
  });
});

/** x87, SSE and AVX state mid-computation is captured and left intact. */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, readImage } from './helpers/tsnap.js';
import { REG_OFFSET } from '../src/sys/uapi.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

describe('FPU/AVX state', () => {
  it('records x87 control word, MXCSR, xmm8, ymm upper halves and r12..r15; the process still passes its own check', async () => {
    const p = await startProcess(await compileC('fpu'), ['read']);
    const dir = join(tmpDir('tsnap-fpu-'), 'img');
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--leave-running');
    expect(r.code, r.stderr).toBe(0);
    const t = readImage(dir).process!.threads[0];
    const x = t.xstate;
    expect(x.readUInt16LE(0)).toBe(0x0f7f); // FCW
    expect(x.readUInt32LE(24)).toBe(0xff80); // MXCSR
    expect(x.readBigUInt64LE(160 + 8 * 16)).toBe(0x0123456789abcdefn); // xmm8 low qword
    // ymm0 upper half: XSAVE standard-format AVX component at offset 576.
    const ypat = Buffer.from(Array.from({ length: 16 }, (_, j) => (0x11 + (j + 16) * 7 + 0x80) & 0xff));
    expect(x.subarray(576, 592).equals(ypat)).toBe(true);
    expect(t.regs.readBigUInt64LE(REG_OFFSET.r12)).toBe(0x1212121212121212n);
    expect(t.regs.readBigUInt64LE(REG_OFFSET.r15)).toBe(0xdeadbeefcafef00dn);
    const before = p.lines().length;
    p.writeLine('x');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 5000, before)).toBe('PASS');
  });
});

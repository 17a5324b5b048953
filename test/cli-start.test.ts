/**
 * What the CLI's start leaves out (docs/performance.md, "Small
 * processes"): a dump of a small process loads none of the built-ins and
 * packages it does not use, the guardian started with posix_spawn gets tsnap's
 * environment and is reaped, and the CRC-32 that starts on node:zlib
 * gives the same values after it switches to tsnap's own C library.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { startTsnap, tsnap } from './helpers/tsnap.js';
import { Guardian } from '../src/sys/index.js';
import { nativeCrc32 } from '../src/sys/crc32.js';
import { crc32 } from '../src/image/checksum.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

/** A preload (NODE_OPTIONS --require: no V8 flag, so every code cache still holds) that lists what the CLI loaded. */
function loadedProbe(dir: string): { env: Record<string, string>; read: () => { builtins: string[]; files: string[] } } {
  const probe = join(dir, 'probe.cjs');
  const out = join(dir, 'loaded.json');
  writeFileSync(probe, `process.on('exit', () => require('fs').writeFileSync(${JSON.stringify(out)}, JSON.stringify({
    builtins: process.moduleLoadList.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice(13)),
    files: Object.keys(require.cache) })));\n`);
  return { env: { NODE_OPTIONS: `--require ${probe}` }, read: () => JSON.parse(readFileSync(out, 'utf8')) };
}

describe('the CLI start', () => {
  it('a dump of a small process loads no node:crypto, child_process, worker_threads, nor the CRC addon; --version no FFI', async () => {
    const dir = tmpDir('tsnap-start-');
    const p = await startProcess(await compileC('counter'), []);
    const probe = loadedProbe(dir);
    const d = await startTsnap(['dump', '--pid', String(p.pid), '--dir', join(dir, 'img'), '--leave-running'], probe.env).done;
    expect(d.code, d.stderr).toBe(0);
    const dumped = probe.read();
    // (node:net is loaded here anyway: stdout is a pipe, a net.Socket.)
    for (const m of ['crypto', 'child_process', 'worker_threads', 'readline']) expect(dumped.builtins, m).not.toContain(m);
    expect(dumped.files.filter((f) => f.includes('@node-rs/crc32') || f.includes('lz4-napi'))).toEqual([]);
    // The image is whole: its id (getrandom, not node:crypto) is a v4 UUID, and it verifies.
    const inv = await tsnap('show', join(dir, 'img'), '--json');
    expect(inv.code, inv.stderr).toBe(0);
    expect(JSON.parse(inv.stdout).inventory.imageId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    const v = await tsnap('verify', join(dir, 'img'));
    expect(v.code, v.stdout + v.stderr).toBe(0);

    const ver = await startTsnap(['--version'], probe.env).done;
    expect(ver.code).toBe(0);
    const started = probe.read();
    expect(started.files.filter((f) => /node_modules\/(koffi|msgpackr|@node-rs)/.test(f))).toEqual([]);
    for (const m of ['crypto', 'child_process', 'worker_threads']) expect(started.builtins, m).not.toContain(m);
  });
});

describe('the guardian, started with posix_spawn', () => {
  it('gets tsnap\'s environment (it runs iptables-restore through PATH) and is reaped, however often it restarts', () => {
    const pids: number[] = [];
    for (let i = 0; i < 2; i++) {
      const g = Guardian.get();
      pids.push(g.pid);
      const env = readFileSync(`/proc/${g.pid}/environ`, 'utf8').split('\0');
      expect(env).toContain(`PATH=${process.env.PATH}`);
      expect(readFileSync(`/proc/${g.pid}/fd/0`, 'utf8')).toBe('');
      Guardian.shutdownAndWait();
    }
    expect(new Set(pids).size).toBe(2);
    // Reaped, not left as zombies of this process.
    for (const pid of pids) expect(existsSync(`/proc/${pid}`), String(pid)).toBe(false);
  });
});

describe('CRC-32', () => {
  it('is the zlib value across the switch from node:zlib to tsnap\'s own library, which matches zlib at every length and alignment', () => {
    const data = randomBytes(24 << 20);
    let c = 0;
    for (let off = 0; off < data.length; off += 1 << 20) c = crc32(data.subarray(off, off + (1 << 20)), c);
    expect(c).toBe(zlibCrc32(data) >>> 0);
    expect(crc32(Buffer.from('hello'))).toBe(907060870);
    // An empty piece keeps the running value (node:zlib's would give 0).
    expect(crc32(Buffer.alloc(0), 12345)).toBe(12345);
    const own = nativeCrc32();
    expect(own, 'dist/native/libtsnap-crc32.so (npm run build)').not.toBeNull();
    const pool = randomBytes(4096 + 16);
    for (let len = 1; len <= 1100; len++) {
      const piece = pool.subarray(len % 13, len % 13 + len);
      const seed = (len * 2654435761) >>> 0;
      expect(own!(seed, piece, piece.length) >>> 0, `length ${len}`).toBe(zlibCrc32(piece, seed) >>> 0);
    }
  });
});

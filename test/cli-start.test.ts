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
import { startTsnap, tsnap, TSNAP_BIN } from './helpers/tsnap.js';
import { createRequire } from 'node:module';
import { execFile } from 'node:child_process';
import { TOOL_VERSION } from '../src/version.js';
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
    // Nor node:net: stdout and stderr are pipes here, but tsnap writes its lines to the fds (cli/stdio.ts), not through process.stdout's net.Socket.
    for (const m of ['crypto', 'child_process', 'worker_threads', 'readline', 'net', 'tty']) expect(dumped.builtins, m).not.toContain(m);
    expect(dumped.files.filter((f) => f.includes('@node-rs/crc32') || f.includes('lz4-napi'))).toEqual([]);
    // koffi's binary by its path (src/sys/koffi.ts), not through koffi's loader; msgpackr from the bundle.
    expect(dumped.files.filter((f) => f.endsWith('/linux_x64/koffi.node'))).toHaveLength(1);
    expect(dumped.files.filter((f) => /node_modules\/(koffi|msgpackr)\//.test(f))).toEqual([]);
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

describe('koffi and the launcher', () => {
  it('a dump through koffi\'s own loader (TSNAP_KOFFI_LOADER=1) gives the same image; the same module is loaded either way', async () => {
    const dir = tmpDir('tsnap-koffi-');
    const p = await startProcess(await compileC('counter'), []);
    const probe = loadedProbe(dir);
    const d = await startTsnap(['dump', '--pid', String(p.pid), '--dir', join(dir, 'img'), '--leave-running'], { ...probe.env, TSNAP_KOFFI_LOADER: '1' }).done;
    expect(d.code, d.stderr).toBe(0);
    const files = probe.read().files;
    expect(files.some((f) => f.endsWith('node_modules/koffi/src/koffi/index.cjs'))).toBe(true);
    expect(files.filter((f) => f.endsWith('/linux_x64/koffi.node'))).toHaveLength(1);
    const v = await tsnap('verify', join(dir, 'img'));
    expect(v.code, v.stdout + v.stderr).toBe(0);
    // In this process: loaded by path first, koffi's loader then finds it in Node's module cache.
    const { koffi } = await import('../src/sys/koffi.js');
    const viaLoader = createRequire(import.meta.url)('koffi') as { default: unknown };
    expect(viaLoader.default).toBe(koffi);
  });

  it('run as a command, bin/tsnap starts Node without NODE_EXTRA_CA_CERTS; `node bin/tsnap` still runs it as JavaScript', async () => {
    // Node warns at start when the file cannot be read: the warning shows which way Node got the variable.
    const env = { ...process.env, NODE_EXTRA_CA_CERTS: '/nonexistent/tsnap-test-ca.pem' };
    const run = (cmd: string, args: string[]) => new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      execFile(cmd, args, { env }, (err, stdout, stderr) => resolve({ code: err ? (err as { code?: number }).code ?? 1 : 0, stdout, stderr }));
    });
    const asCommand = await run(TSNAP_BIN, ['--version']);
    expect([asCommand.code, asCommand.stdout.trim(), asCommand.stderr]).toEqual([0, TOOL_VERSION, '']);
    const viaNode = await run(process.execPath, [TSNAP_BIN, '--version']);
    expect([viaNode.code, viaNode.stdout.trim()]).toEqual([0, TOOL_VERSION]);
    expect(viaNode.stderr).toMatch(/extra certs/i);
    // Arguments and exit codes pass through the shell line unchanged.
    const usage = await run(TSNAP_BIN, ['dump', '--dir', 'a b']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/--pid/);
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

  // From 256 bytes the library folds with 512-bit VPCLMULQDQ where the CPU has it, else (or with
  // TSNAP_CRC_VCLMUL=0, read at load) with the 128-bit loop: both must give zlib's value.
  it('matches zlib on both folding loops around their block sizes', async () => {
    const lens = [63, 64, 255, 256, 257, 319, 320, 511, 512, 513, 2047, 2048, 2049, 4096, 4099, 65536 + 3, (1 << 20) + 5];
    const pool = randomBytes((1 << 20) + 64);
    const file = join(tmpDir('tsnap-crc-'), 'pool');
    writeFileSync(file, pool, { mode: 0o600 });
    const lib = new URL('../dist/src/sys/crc32.js', import.meta.url).href;
    const script = `import { nativeCrc32 } from ${JSON.stringify(lib)}; import { readFileSync } from 'node:fs';
      const pool = readFileSync(${JSON.stringify(file)}); const f = nativeCrc32();
      console.log(JSON.stringify(${JSON.stringify(lens)}.map((n, i) => f((n * 2654435761) >>> 0, pool.subarray(i % 17, i % 17 + n), n) >>> 0)));`;
    for (const v of ['0', '1']) {
      const out: string = await new Promise((resolve, reject) => execFile(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, TSNAP_CRC_VCLMUL: v } }, (err, stdout) => (err ? reject(err) : resolve(stdout))));
      const got = JSON.parse(out) as number[];
      lens.forEach((n, i) => expect(got[i], `TSNAP_CRC_VCLMUL=${v}, length ${n}`).toBe(zlibCrc32(pool.subarray(i % 17, i % 17 + n), (n * 2654435761) >>> 0) >>> 0));
    }
  });
  // bin/tsnap as a command runs node with --single-threaded-gc for every command but serve
  // (the comment there says why); the command is found past the global options.
  it('starts serve without --single-threaded-gc, after global options too, and every other command with it', async () => {
    const dir = tmpDir('tsnap-gcflag-');
    const out = join(dir, 'argv.json');
    const probe = join(dir, 'probe.cjs');
    writeFileSync(probe, `require('fs').writeFileSync(${JSON.stringify(out)}, JSON.stringify(process.execArgv)); process.exit(0);\n`);
    const execArgv = async (args: string[]): Promise<string[]> => {
      await new Promise<void>((resolve, reject) => execFile(TSNAP_BIN, args, { env: { ...process.env, NODE_OPTIONS: `--require ${probe}` } }, (err) => (err ? reject(err) : resolve())));
      return JSON.parse(readFileSync(out, 'utf8')) as string[];
    };
    for (const args of [['serve', '--port', '1'], ['-q', 'serve'], ['--log-file', join(dir, 'log'), 'serve'], [`--log-file=${join(dir, 'log')}`, '-v', 'serve']]) {
      expect(await execArgv(args), args.join(' ')).not.toContain('--single-threaded-gc');
    }
    for (const args of [['dump', '--pid', '1'], ['--log-file', 'serve', 'show'], ['-q', 'migrate', 'serve'], ['--version']]) {
      expect(await execArgv(args), args.join(' ')).toContain('--single-threaded-gc');
    }
  });
});

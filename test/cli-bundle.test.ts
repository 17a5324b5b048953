/**
 * bin/tsnap runs the bundled CLI (dist/cli/, scripts/bundle-cli.mjs) when it
 * is as new as the compiled one: the other CLI tests exercise it end to end.
 * Here: that they do (the bundle is there and fresh), and that it is the
 * same CLI as the compiled modules (options, help, errors and their exit
 * codes, the version read through a rewritten import.meta.url).
 */
import { describe, it, expect, afterAll } from 'vitest';
import { readFileSync, readdirSync, statSync, writeFileSync, rmSync, mkdtempSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startTsnap, type CliResult } from './helpers/tsnap.js';
import { ExitCode } from '../src/errors.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BUNDLE = join(ROOT, 'dist', 'cli');

const caches: string[] = [];
afterAll(() => { for (const c of caches) rmSync(c, { recursive: true, force: true }); });
/** An empty cache directory for one test (0755, owned by the bundle's owner, as bin/tsnap requires). */
function privateCache(): string {
  const dir = mkdtempSync(join(tmpdir(), 'tsnap-cli-cache-'));
  chmodSync(dir, 0o755);
  caches.push(dir);
  return dir;
}

const both = async (...args: string[]): Promise<[CliResult, CliResult]> =>
  Promise.all([startTsnap(args).done, startTsnap(args, { TSNAP_NO_BUNDLE: '1' }).done]);

describe('the bundled CLI', () => {
  it('is built, fresh, and has no import.meta left', () => {
    expect(statSync(join(BUNDLE, 'main.cjs')).mtimeMs).toBeGreaterThanOrEqual(statSync(join(ROOT, 'dist', 'src', 'cli', 'main.js')).mtimeMs);
    for (const f of readdirSync(BUNDLE)) expect(readFileSync(join(BUNDLE, f), 'utf8'), f).not.toMatch(/import\.meta/);
  });

  it('answers as the compiled modules do: version, every option, a usage error, a library error', async () => {
    const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    const [v, vEsm] = await both('--version');
    expect(v.stdout.trim()).toBe(version);
    expect(vEsm.stdout.trim()).toBe(version);
    // The completion script lists every command and each one's options.
    const [c, cEsm] = await both('completion', 'bash');
    expect(c.code).toBe(0);
    expect(c.stdout).toBe(cEsm.stdout);
    const [u, uEsm] = await both('serve', '--dir', '/nonexistent', '--count', 'x');
    expect([u.code, u.stderr]).toEqual([ExitCode.usage, uEsm.stderr]);
    // A TsnapError thrown in a lazily loaded chunk is still one to the error reporter.
    const [e, eEsm] = await both('dump', '--pid', '4194300', '--dir', '/nonexistent/img');
    expect([e.code, e.stderr]).toEqual([ExitCode.noSuchProcess, eEsm.stderr]);
    expect(eEsm.code).toBe(ExitCode.noSuchProcess);
  });

  it('keeps compiled code in dist/cli-cache; a damaged entry is compiled again and replaced, with the same answers', async () => {
    expect((await startTsnap(['--version']).done).code).toBe(0);
    expect(readdirSync(join(ROOT, 'dist', 'cli-cache')).some((f) => f.endsWith('.v8'))).toBe(true);
    // A cache of its own: other test files run the CLI meanwhile, and each run writes the entries it lacks.
    const cache = privateCache();
    const first = await startTsnap(['dump', '--pid', '4194300', '--dir', '/nonexistent/img'], { TSNAP_COMPILE_CACHE_DIR: cache }).done;
    const entries = readdirSync(cache).filter((f) => f.endsWith('.v8'));
    expect(entries.length).toBeGreaterThan(0);
    for (const f of entries) writeFileSync(join(cache, f), 'not V8 code');
    const again = await startTsnap(['dump', '--pid', '4194300', '--dir', '/nonexistent/img'], { TSNAP_COMPILE_CACHE_DIR: cache }).done;
    expect([again.code, again.stderr]).toEqual([first.code, first.stderr]);
    const off = await startTsnap(['dump', '--pid', '4194300', '--dir', '/nonexistent/img'], { TSNAP_NO_COMPILE_CACHE: '1', TSNAP_COMPILE_CACHE_DIR: cache }).done;
    expect([off.code, off.stderr]).toEqual([first.code, first.stderr]);
    // Rewritten on exit: no entry holds the damage any more.
    expect(entries.filter((f) => readFileSync(join(cache, f), 'utf8') === 'not V8 code')).toEqual([]);
  });

  it('the compile cache ignores an entry saved under another key, and rewrites it', async () => {
    const cache = privateCache();
    // A library error: --version alone loads one file (main.cjs), a command the library chunk too.
    const run = ['dump', '--pid', '4194300', '--dir', '/nonexistent/img'];
    const first = await startTsnap(run, { TSNAP_COMPILE_CACHE_DIR: cache }).done;
    expect(first.code).not.toBe(0);
    const entries = readdirSync(cache).filter((f) => f.endsWith('.v8')).sort();
    expect(entries.length).toBeGreaterThan(1);
    // Each entry given another's bytes: V8 would accept code of the same source length, the key check must not.
    const bytes = entries.map((f) => readFileSync(join(cache, f)));
    entries.forEach((f, i) => writeFileSync(join(cache, f), bytes[(i + 1) % entries.length]));
    const again = await startTsnap(run, { TSNAP_COMPILE_CACHE_DIR: cache }).done;
    expect([again.code, again.stdout, again.stderr]).toEqual([first.code, first.stdout, first.stderr]);
    for (let i = 0; i < entries.length; i++) {
      if (bytes[i].equals(bytes[(i + 1) % entries.length])) continue;
      expect(readFileSync(join(cache, entries[i])).equals(bytes[(i + 1) % entries.length]), entries[i]).toBe(false);
    }
  });

  it('the bundle is ASCII, read once by the cache\'s loader, and an entry saved by one run is used as it is by the next', async () => {
    // Non-ASCII text makes V8 hold a file as two bytes per character (docs/performance.md, "Peak RSS").
    for (const f of readdirSync(BUNDLE)) expect(/[^\x00-\x7f]/.test(readFileSync(join(BUNDLE, f), 'latin1')), f).toBe(false);
    const cache = privateCache();
    // Which bundle files Node's own loader reads (fs.readFileSync): with the cache none, the loader reads each inside the wrapper, one string.
    const probe = join(cache, 'reads.cjs');
    const out = join(cache, 'reads.json');
    writeFileSync(probe, `const fs = require('fs'); const read = fs.readFileSync; const seen = [];
fs.readFileSync = function (p, ...rest) { if (typeof p === 'string' && p.startsWith(${JSON.stringify(BUNDLE)})) seen.push(p); return read.call(this, p, ...rest); };
process.on('exit', () => fs.writeFileSync(${JSON.stringify(out)}, JSON.stringify(seen)));\n`);
    const reads = (): string[] => JSON.parse(readFileSync(out, 'utf8'));
    const env = { TSNAP_COMPILE_CACHE_DIR: cache, NODE_OPTIONS: `--require ${probe}` };
    const run = ['dump', '--pid', '4194300', '--dir', '/nonexistent/img'];
    const entries = () => Object.fromEntries(readdirSync(cache).filter((f) => f.endsWith('.v8')).map((f) => [f, statSync(join(cache, f)).ino]));
    const first = await startTsnap(run, env).done;
    expect(first.code).toBe(ExitCode.noSuchProcess);
    expect(reads()).toEqual([]);
    const saved = entries();
    expect(Object.keys(saved).length).toBeGreaterThan(1);
    const again = await startTsnap(run, env).done;
    expect([again.code, again.stderr]).toEqual([first.code, first.stderr]);
    expect(reads()).toEqual([]);
    // An entry V8 rejected (its source not the one it was saved from) would be written again, by rename: a new inode.
    expect(entries()).toEqual(saved);
    const off = await startTsnap(run, { ...env, TSNAP_NO_COMPILE_CACHE: '1' }).done;
    expect([off.code, off.stderr]).toEqual([first.code, first.stderr]);
    expect(reads().filter((f) => f.endsWith('.cjs')).length).toBeGreaterThan(1);
  });
});

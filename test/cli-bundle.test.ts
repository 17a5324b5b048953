/**
 * bin/tsnap runs the bundled CLI (dist/cli/, scripts/bundle-cli.mjs) when it
 * is as new as the compiled one: the other CLI tests exercise it end to end.
 * Here: that they do (the bundle is there and fresh), and that it is the
 * same CLI as the compiled modules (options, help, errors and their exit
 * codes, the version read through a rewritten import.meta.url).
 */
import { describe, it, expect } from 'vitest';
import { readFileSync, readdirSync, statSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startTsnap, type CliResult } from './helpers/tsnap.js';
import { ExitCode } from '../src/errors.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BUNDLE = join(ROOT, 'dist', 'cli');

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
    const cache = join(ROOT, 'dist', 'cli-cache');
    // Only this command's entries: those other commands left are not loaded by it.
    rmSync(cache, { recursive: true, force: true });
    const first = await startTsnap(['dump', '--pid', '4194300', '--dir', '/nonexistent/img']).done;
    const entries = readdirSync(cache).filter((f) => f.endsWith('.v8'));
    expect(entries.length).toBeGreaterThan(0);
    for (const f of entries) writeFileSync(join(cache, f), 'not V8 code');
    const again = await startTsnap(['dump', '--pid', '4194300', '--dir', '/nonexistent/img']).done;
    expect([again.code, again.stderr]).toEqual([first.code, first.stderr]);
    const off = await startTsnap(['dump', '--pid', '4194300', '--dir', '/nonexistent/img'], { TSNAP_NO_COMPILE_CACHE: '1' }).done;
    expect([off.code, off.stderr]).toEqual([first.code, first.stderr]);
    // Rewritten on exit: no entry holds the damage any more.
    expect(entries.filter((f) => readFileSync(join(cache, f), 'utf8') === 'not V8 code')).toEqual([]);
  });
});

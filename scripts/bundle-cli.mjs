/**
 * Bundles the compiled CLI (dist/src/cli/main.js and what it imports) into
 * CommonJS chunks in dist/cli/, one per lazily imported command path.
 * Why: on Node 20, loading ~110 ES modules costs more than the work of a
 * small dump (ESM resolution per file, module compilation, and a lexer pass
 * over every CommonJS package imported from ESM); the same code as a few
 * CommonJS files loads in about half the CPU time (bench/startup.ts).
 * bin/tsnap runs the bundle when it is at least as new as dist/src, and
 * dist/src/cli/main.js otherwise. The library (dist/src) is not bundled.
 *
 * import.meta.url is rewritten per module to the URL of that module's own
 * file in dist/src, so paths resolved from it (the guardian and helper
 * binaries, worker and pager scripts, package.json) stay what they were.
 */
import { rmSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'rolldown';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = join(root, 'dist', 'cli');

const ownUrl = {
  name: 'tsnap-own-import-meta-url',
  transform(code, id) {
    if (!code.includes('import.meta.url')) return null;
    const rel = relative(outDir, id).split('\\').join('/');
    const url = `require('node:url').pathToFileURL(require('node:path').join(__dirname, ${JSON.stringify(rel)})).href`;
    return { code: code.replaceAll('import.meta.url', url), map: null };
  },
};

rmSync(outDir, { recursive: true, force: true });
// Code cached for the old bundle (bin/compile-cache.cjs) would only be rejected.
rmSync(join(root, 'dist', 'cli-cache'), { recursive: true, force: true });
await build({
  input: join(root, 'dist', 'src', 'cli', 'main.js'),
  platform: 'node',
  // Packages stay packages: native addons must load from node_modules.
  external: [/^[^./]/],
  plugins: [ownUrl],
  logLevel: 'warn',
  output: { dir: outDir, format: 'cjs', entryFileNames: 'main.cjs', chunkFileNames: '[name]-[hash].cjs', sourcemap: false },
});

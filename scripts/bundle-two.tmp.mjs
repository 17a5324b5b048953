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
const outDir = join(root, 'dist', 'cli-two');

const ownUrl = {
  name: 'tsnap-own-import-meta-url',
  transform(code, id) {
    if (!code.includes('import.meta.url')) return null;
    const rel = relative(outDir, id).split('\\').join('/');
    const url = `require('node:url').pathToFileURL(require('node:path').join(__dirname, ${JSON.stringify(rel)})).href`;
    return { code: code.replaceAll('import.meta.url', url), map: null };
  },
};

// Built-in modules a command may not use, loaded on first use: the dump of a
// small process pays ~10 ms of CPU and ~2 MiB each for node:crypto,
// node:child_process (with net and dgram) and node:worker_threads, which
// only some of its paths touch. The bundle reads an import's members at
// each use (`node_crypto.randomUUID`), so a proxy that requires the module
// on the first read is the same module to the code. node:fs, node:path and
// node:url are loaded by Node's own start anyway; node:stream and
// node:events are functions (a proxy of an object is not).
const LAZY_BUILTINS = new Set(['child_process', 'crypto', 'dgram', 'dns', 'fs/promises', 'http', 'https', 'net', 'os', 'readline', 'tls', 'worker_threads', 'zlib']);
const lazyBuiltins = {
  name: 'tsnap-lazy-builtins',
  renderChunk(code) {
    let used = false;
    const out = code.replace(/^(\s*)(let|const|var) ([\w$]+) = require\("(?:node:)?([a-z_/]+)"\);$/gm, (line, indent, kind, name, mod) => {
      if (!LAZY_BUILTINS.has(mod)) return line;
      used = true;
      return `${indent}${kind} ${name} = __tsnapLazy(${JSON.stringify(`node:${mod}`)});`;
    });
    if (!used) return null;
    const helper = 'function __tsnapLazy(id) { let m; const load = () => (m ??= require(id)); return new Proxy({}, { get: (_, k) => load()[k], has: (_, k) => k in load(), ownKeys: () => Reflect.ownKeys(load()), getOwnPropertyDescriptor: (_, k) => { const d = Reflect.getOwnPropertyDescriptor(load(), k); if (d) d.configurable = true; return d; } }); }\n';
    // After a leading "use strict" directive, which must stay first.
    const strict = out.match(/^(["']use strict["'];\n)/);
    return { code: strict ? strict[1] + helper + out.slice(strict[1].length) : helper + out, map: null };
  },
};

rmSync(outDir, { recursive: true, force: true });
// Code cached for the old bundle (bin/compile-cache.cjs) would only be rejected.

await build({
  input: join(root, 'dist', 'src', 'cli', 'main.js'),
  platform: 'node',
  // Packages stay packages: native addons must load from node_modules.
  // commander is plain JavaScript, loaded by every command: in the bundle it
  // costs no module resolution, and its require of node:child_process (for
  // executable subcommands, which tsnap has none of) goes lazy below.
  // msgpackr too (only its Packr is used; its optional native extractor is
  // still required from node_modules, and is off by default, bin/tsnap): a
  // package resolved through an `exports` map is ~3-5 ms of CPU on a small
  // dump, the first one more (Node's resolver warms up).
  external: [/^(?!(commander|msgpackr)($|\/))[^./]/],
  plugins: [ownUrl, lazyBuiltins],
  logLevel: 'warn',
  output: { dir: outDir, format: 'cjs', entryFileNames: 'main.cjs', chunkFileNames: '[name]-[hash].cjs', sourcemap: false, codeSplitting: { includeDependenciesRecursively: false, groups: [{ name: 'lib', test: (id) => (/dist\/src\//.test(id) && !/dist\/src\/(cli\/|errors\.js$|version\.js$|format\.js$|sys\/guardian-state\.js$|sys\/errors\.js$)/.test(id)) || /node_modules\/msgpackr/.test(id) }] } },
});

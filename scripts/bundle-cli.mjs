/**
 * Bundles the compiled CLI (dist/src/cli/main.js and what it imports) into
 * CommonJS in dist/cli/: main.cjs (the command line) and lib-*.cjs (the
 * library, loaded when a command runs; see the output options below).
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

// Built-in modules a command may not use, loaded on first use: the dump of a
// small process pays ~10 ms of CPU and ~2 MiB each for node:crypto,
// node:child_process (with net and dgram) and node:worker_threads, which
// only some of its paths touch. The bundle reads an import's members at
// each use (`node_crypto.randomUUID`), so a proxy that requires the module
// on the first read is the same module to the code. node:fs, node:path and
// node:url are loaded by Node's own start anyway; node:stream and
// node:events are functions (a proxy of an object is not).
const LAZY_BUILTINS = new Set(['child_process', 'crypto', 'dgram', 'dns', 'fs/promises', 'http', 'https', 'net', 'os', 'readline', 'tls', 'worker_threads', 'zlib']);
// Packages the same way: the library chunk holds every command's code, and
// lz4-napi (a native addon, the wire's codec) is only for a migration.
const LAZY_PACKAGES = new Set(['lz4-napi']);
const lazyBuiltins = {
  name: 'tsnap-lazy-builtins',
  renderChunk(code) {
    let used = false;
    const out = code.replace(/^(\s*)(let|const|var) ([\w$]+) = require\("((?:node:)?[a-z0-9_/-]+)"\);$/gm, (line, indent, kind, name, spec) => {
      const mod = spec.replace(/^node:/, '');
      const id = LAZY_PACKAGES.has(spec) ? spec : LAZY_BUILTINS.has(mod) ? `node:${mod}` : null;
      if (!id) return line;
      used = true;
      return `${indent}${kind} ${name} = __tsnapLazy(${JSON.stringify(id)});`;
    });
    if (!used) return null;
    const helper = 'function __tsnapLazy(id) { let m; const load = () => (m ??= require(id)); return new Proxy({}, { get: (_, k) => load()[k], has: (_, k) => k in load(), ownKeys: () => Reflect.ownKeys(load()), getOwnPropertyDescriptor: (_, k) => { const d = Reflect.getOwnPropertyDescriptor(load(), k); if (d) d.configurable = true; return d; } }); }\n';
    // After a leading "use strict" directive, which must stay first.
    const strict = out.match(/^(["']use strict["'];\n)/);
    return { code: strict ? strict[1] + helper + out.slice(strict[1].length) : helper + out, map: null };
  },
};

// What --version and a usage error load stays out of the library chunk.
const MAIN_ONLY = /dist\/src\/(cli\/|errors\.js$|version\.js$|format\.js$|sys\/guardian-state\.js$|sys\/errors\.js$)/;
function inLibrary(id) {
  return (id.includes('/dist/src/') && !MAIN_ONLY.test(id)) || id.includes('/node_modules/msgpackr/');
}

rmSync(outDir, { recursive: true, force: true });
// Code cached for the old bundle (bin/compile-cache.cjs) would only be rejected.
rmSync(join(root, 'dist', 'cli-cache'), { recursive: true, force: true });
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
  // Two files, not one per lazily imported path: the command line (main.cjs:
  // commander, the command table, what an error report needs) and the
  // library (lib-*.cjs), loaded by the first command that runs library code.
  // Each file costs ~0.5 ms of CPU to load (resolve, stat, read it and its
  // cache entry): a small dump loaded ~30 chunks; as two files its CPU went
  // 147 -> 136 ms and --version's 70 -> 62 (one file for everything: the
  // dump 130, but --version 85). The library chunk requires main.cjs back
  // for what they share; by then main.cjs is evaluated.
  preserveEntrySignatures: 'allow-extension',
  // ASCII only (charset): one character outside it (an em dash in a comment)
  // made V8 hold the whole file as two bytes per character, ~1.9 MiB for the
  // library chunk. No JSDoc comments: the text V8 keeps for lazy compilation
  // is a quarter smaller (965 -> 741 KiB); errors point into the bundle by
  // line either way (no source map), and each module's `// dist/src/...`
  // marker stays. docs/performance.md, "Peak RSS".
  output: {
    dir: outDir, format: 'cjs', entryFileNames: 'main.cjs', chunkFileNames: '[name]-[hash].cjs', sourcemap: false, charset: 'ascii', comments: { legal: true, annotation: false, jsdoc: false },
    codeSplitting: { includeDependenciesRecursively: false, groups: [{ name: 'lib', test: inLibrary }] },
  },
});

'use strict';
/**
 * A V8 code cache for the bundled CLI and the packages it loads: Node 20
 * has no compile cache of its own (NODE_COMPILE_CACHE came in 22.1), and
 * compiling ~900 KB of CommonJS on every start was ~40 ms of CPU of a small
 * dump. Each file compiled without a usable cache entry is compiled as
 * usual, and its code (the functions that ran included) is saved when the
 * process exits; the next start hands it to V8, which checks it against the
 * source and V8 version and flags, and falls back to compiling if it does
 * not match.
 *
 * The cache is code: it is used only from a directory owned by the owner
 * of the bundle and writable by no one else, and it is written (atomically,
 * by rename) only there. TSNAP_NO_COMPILE_CACHE=1 turns it off.
 *
 * An entry starts with the key it was saved under (file, size, mtime, Node
 * version, command, Node's flags), compared in full on load: V8's own check of the source is its
 * length only, so a file name that merely hashed alike must not pass. The
 * name hash is FNV-1a, not node:crypto, whose load cost ~10 ms of CPU.
 */
const Module = require('node:module');
const vm = require('node:vm');
const fs = require('node:fs');
const path = require('node:path');

function trusted(dir, owner) {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
    const st = fs.statSync(dir);
    return st.isDirectory() && st.uid === owner && (st.mode & 0o022) === 0;
  } catch {
    return false;
  }
}

/** 64-bit FNV-1a of `bytes`, as 16 hex digits (two 32-bit halves with different offsets). */
function fnv1a(bytes) {
  let a = 0x811c9dc5;
  let b = 0x050c5d1f;
  for (let i = 0; i < bytes.length; i++) {
    a = Math.imul(a ^ bytes[i], 0x01000193);
    b = Math.imul(b ^ bytes[i], 0x01000193) ^ (a >>> 15);
  }
  return (a >>> 0).toString(16).padStart(8, '0') + (b >>> 0).toString(16).padStart(8, '0');
}

/** The V8 data of a cache entry saved under `key`; undefined for another key or a damaged entry. */
function unwrap(entry, key) {
  if (entry.length < 4) return undefined;
  const n = entry.readUInt32LE(0);
  if (n !== key.length || entry.length < 4 + n || !entry.subarray(4, 4 + n).equals(key)) return undefined;
  return entry.subarray(4 + n);
}

/**
 * `roots`: directories whose CommonJS files go through the cache. `flavor`
 * (the command) is part of each entry's key: an entry holds the functions
 * that ran in the run that saved it, and the library chunk is one file for
 * every command, so a restore must not be left with a dump's entry.
 *
 * The bundle's own files (.cjs) are read here, inside Node's wrapper, into
 * one string. Given the text Node had read instead, the wrapped copy made
 * from it was a second string as large, both alive while the library ran
 * its top level, and the young generation that promoted them doubled
 * (4 -> 8 MiB): with the library then held as two bytes per character,
 * +5-6 MiB of peak RSS in a 1 GiB dump against the same run without the
 * cache (docs/performance.md, "Peak RSS of a 1 GiB dump"). Other files (a
 * package's .js, where Node also checks the package type) are read by
 * Node as usual and wrapped in _compile.
 */
exports.install = function install(dir, roots, owner, flavor = '') {
  if (process.env.TSNAP_NO_COMPILE_CACHE === '1' || !trusted(dir, owner)) return;
  const fresh = [];
  const inRoots = (filename) => roots.some((r) => filename.startsWith(r));

  /** Compiles `source` (the file's text inside Node's wrapper) with its cache entry, and runs it as `module`. */
  function run(module, source, filename, st) {
    // V8 rejects code cached under other flags: `node bin/tsnap` (tests, benches) and the
    // command's own `node --single-threaded-gc` keep an entry each instead of overwriting each other's.
    const key = Buffer.from(`${filename}\0${st.size}\0${st.mtimeMs}\0${process.version}\0${flavor}\0${process.execArgv.join(' ')}`);
    const file = path.join(dir, `${fnv1a(key)}.v8`);
    let cachedData;
    try { cachedData = unwrap(fs.readFileSync(file), key); } catch { /* not cached yet */ }
    const script = new vm.Script(source, {
      filename,
      cachedData,
      importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
    });
    if (!cachedData || script.cachedDataRejected) fresh.push({ file, key, script });
    const fn = script.runInThisContext({ displayErrors: true });
    const req = (id) => module.require(id);
    req.resolve = (request, options) => Module._resolveFilename(request, module, false, options);
    req.main = require.main;
    req.cache = Module._cache;
    req.extensions = Module._extensions;
    return fn.call(module.exports, module.exports, req, module, filename, path.dirname(filename));
  }

  const [head, tail] = Module.wrap('\0').split('\0').map((s) => Buffer.from(s));
  const loadJs = Module._extensions['.js'];
  Module._extensions['.js'] = function (module, filename) {
    if (!filename.endsWith('.cjs') || !inRoots(filename)) return loadJs.call(this, module, filename);
    const fd = fs.openSync(filename, 'r');
    let st, bytes;
    try {
      st = fs.fstatSync(fd);
      bytes = Buffer.allocUnsafe(head.length + st.size + tail.length);
      head.copy(bytes, 0);
      let n = 0;
      while (n < st.size) {
        const got = fs.readSync(fd, bytes, head.length + n, st.size - n, n);
        if (got === 0) break;
        n += got;
      }
      // Shorter than its stat said (rewritten meanwhile): Node's reading of it, as without the cache.
      if (n !== st.size) return loadJs.call(this, module, filename);
      tail.copy(bytes, head.length + n);
    } finally {
      fs.closeSync(fd);
    }
    return run(module, bytes.toString('utf8'), filename, st);
  };

  const compile = Module.prototype._compile;
  Module.prototype._compile = function (content, filename) {
    if (!inRoots(filename)) return compile.call(this, content, filename);
    let st;
    try { st = fs.statSync(filename); } catch { return compile.call(this, content, filename); }
    return run(this, Module.wrap(content), filename, st);
  };

  process.once('exit', () => {
    for (const { file, key, script } of fresh) {
      try {
        const tmp = `${file}.${process.pid}.tmp`;
        const head = Buffer.alloc(4);
        head.writeUInt32LE(key.length);
        fs.writeFileSync(tmp, Buffer.concat([head, key, script.createCachedData()]), { mode: 0o644 });
        fs.renameSync(tmp, file);
      } catch { /* a cache that cannot be written is only slower */ }
    }
  });
};

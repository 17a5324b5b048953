/**
 * koffi, loaded straight from its prebuilt binary when it sits where npm
 * puts it. koffi's own loader (koffi/index.cjs) reads Node's ELF headers to
 * tell glibc from musl, resolves two packages through their `exports` and
 * wraps functions deprecated since koffi 2: ~10 ms of CPU at the start of a
 * small dump, against ~1.5 ms for the dlopen itself (bench/startup.ts).
 *
 * The binary is required by its path, so Node's module cache holds it under
 * the same name as when koffi's loader requires it: one koffi instance (one
 * type registry) whichever way it was loaded first. Any other layout, a musl
 * system, a version that does not match koffi's package, or
 * TSNAP_KOFFI_LOADER=1 goes through koffi's own loader.
 */
import { createRequire } from 'node:module';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type KoffiModule from 'koffi';

type Koffi = typeof KoffiModule;

const load = createRequire(import.meta.url);

// dist/src/sys/ (the build, the bundle) or src/sys/ (the tests) under the package root.
const ROOTS = ['../../../node_modules/', '../../node_modules/'];

function direct(): Koffi | null {
  if (process.env.TSNAP_KOFFI_LOADER === '1' || process.platform !== 'linux' || process.arch !== 'x64') return null;
  if (existsSync('/lib/ld-musl-x86_64.so.1')) return null;
  for (const rel of ROOTS) {
    const nm = fileURLToPath(new URL(rel, import.meta.url));
    let version: unknown;
    try { version = (JSON.parse(readFileSync(`${nm}koffi/package.json`, 'utf8')) as { version?: unknown }).version; } catch { continue; }
    const bin = `${nm}@koromix/koffi-linux-x64/linux_x64/koffi.node`;
    if (!existsSync(bin)) return null;
    try {
      const native = load(bin) as Koffi & { version?: unknown };
      return native.version === version && typeof native.load === 'function' ? native : null;
    } catch {
      return null;
    }
  }
  return null;
}

export const koffi: Koffi = direct() ?? (load('koffi') as Koffi);

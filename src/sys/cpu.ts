/**
 * This CPU's XSAVE layout (src/sys/tsnap-cpu.c, in libtsnap-crc32.so):
 * the features XCR0 enables and the length of the XSAVE area that
 * PTRACE_GETREGSET gives for them. Null where the library is not built
 * or the CPU has no XSAVE.
 */
import { load } from './crc32.js';

let layout: { xcr0: bigint; size: number } | null | undefined;

export function cpuXsaveLayout(): { xcr0: bigint; size: number } | null {
  if (layout !== undefined) return layout;
  layout = null;
  try {
    const fn = load()?.func('int tsnap_xsave_layout(_Out_ uint64_t *xcr0, _Out_ uint32_t *size)');
    if (fn) {
      const xcr0 = [0n];
      const size = [0];
      if (fn(xcr0, size) === 0) layout = { xcr0: BigInt(xcr0[0]), size: Number(size[0]) };
    }
  } catch { /* not built: nothing to compare with */ }
  return layout;
}

/** VmFlags from /proc/PID/smaps: per-VMA flags that maps does not show. */
import { readProcText } from './read.js';
import { hexAt } from './num.js';

const VMFLAGS = 'VmFlags:';

function isHeaderStart(c: number): boolean {
  // Header lines begin with a lowercase hex address; every field key
  // ("Size:", "Rss:", "VmFlags:", ...) begins with an uppercase letter.
  return (c >= 48 && c <= 57) || (c >= 97 && c <= 102);
}

/** VMA start -> VmFlags tokens ('rd', 'wr', 'gd', 'dd', 'uw', ...). */
export function parseVmFlags(text: string): Map<number, string[]> {
  const out = new Map<number, string[]>();
  let current = -1;
  let pos = 0;
  const len = text.length;
  while (pos < len) {
    let eol = text.indexOf('\n', pos);
    if (eol < 0) eol = len;
    if (eol > pos) {
      if (isHeaderStart(text.charCodeAt(pos))) {
        const dash = text.indexOf('-', pos);
        if (dash < 0 || dash > eol) throw new Error(`malformed smaps header: ${text.slice(pos, eol)}`);
        current = hexAt(text, pos, dash);
        if (Number.isNaN(current)) throw new Error(`malformed smaps header: ${text.slice(pos, eol)}`);
      } else if (current >= 0 && text.startsWith(VMFLAGS, pos)) {
        const tokens = text.slice(pos + VMFLAGS.length, eol).split(' ').filter((t) => t !== '');
        out.set(current, tokens);
      }
    }
    pos = eol + 1;
  }
  return out;
}

/**
 * Costly: producing smaps makes the kernel walk every page table of the target
 * to compute Rss/Pss/Swap, so this is for small processes and tests. Dumps of
 * large processes should get what they need from maps plus pagemap.
 */
export function readVmFlags(pid: number): Map<number, string[]> {
  return parseVmFlags(readProcText(pid, 'smaps'));
}

/**
 * A random (version 4) UUID from getrandom(2). node:crypto's randomUUID
 * would do, but loading node:crypto costs a dump of a small process ~10 ms
 * of CPU and ~2 MiB of RSS for this one call (docs/performance.md, "Small
 * processes").
 */
import { libc } from './libc.js';
import { SysError } from './errors.js';

const SYS_GETRANDOM = 318;
const EINTR = 4;

export function randomUuid(): string {
  const b = Buffer.alloc(16);
  for (let got = 0; got < 16;) {
    const n = Number(libc.syscall(SYS_GETRANDOM, libc.address(b.subarray(got)), 16 - got, 0, 0, 0, 0));
    if (n === -1) {
      const e = libc.errno();
      if (e === EINTR) continue;
      throw new SysError('getrandom', e);
    }
    got += n;
  }
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * Named points where a test can make tsnap die, to prove that a tsnap
 * killed at that instant harms nothing. `TSNAP_FAULT_AT=name[:n]` makes the
 * n-th arrival (default the first) at `name` SIGKILL tsnap itself: no
 * handler runs, exactly as with an OOM kill or `kill -9`. Unset, every
 * point costs one comparison.
 */
const spec = process.env.TSNAP_FAULT_AT ?? '';
const [wanted, nth] = spec.split(':');
const at = Number(nth ?? 1);
let count = 0;

export function faultPoint(name: string): void {
  if (!spec || name !== wanted) return;
  if (++count === at) process.kill(process.pid, 'SIGKILL');
}

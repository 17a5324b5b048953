/**
 * Test hooks, inert in production (one comparison each).
 *
 * Named points where a test can make tsnap die, to prove that a tsnap
 * killed at that instant harms nothing. `TSNAP_FAULT_AT=name[:n]` makes the
 * n-th arrival (default the first) at `name` SIGKILL tsnap itself: no
 * handler runs, exactly as with an OOM kill or `kill -9`. Unset, every
 * point costs one comparison.
 */
import { existsSync, readFileSync, readdirSync, writeSync } from 'node:fs';

const spec = process.env.TSNAP_FAULT_AT ?? '';
const [wanted, nth] = spec.split(':');
const at = Number(nth ?? 1);
let count = 0;

export function faultPoint(name: string): void {
  if (!spec || name !== wanted) return;
  if (++count === at) process.kill(process.pid, 'SIGKILL');
}

/**
 * With TSNAP_TEST_PAUSE_AT=name, tsnap says so on stderr ("tsnap: paused
 * at NAME") and stops itself (SIGSTOP) when it reaches `name`, so that a
 * test can signal or SIGKILL it exactly there, then SIGCONT it. Each name
 * is used at one place only.
 */
export function pausePoint(name: string): void {
  if (process.env.TSNAP_TEST_PAUSE_AT !== name) return;
  writeSync(2, `tsnap: paused at ${name}\n`);
  process.kill(process.pid, 'SIGSTOP');
  settleSignals();
}

/**
 * A signal the test sent while tsnap was stopped belongs before this
 * point. After SIGCONT any of Node's threads may take it, and its handler
 * (libuv's, which only writes to a pipe) can run after the main thread has
 * already polled that pipe: the signal would then land after the point the
 * test meant. So wait until no thread has it pending, then a little more
 * for the handler's write.
 */
function settleSignals(): void {
  const nap = new Int32Array(new SharedArrayBuffer(4));
  for (let i = 0; i < 400 && signalsPending(); i++) Atomics.wait(nap, 0, 0, 5);
  Atomics.wait(nap, 0, 0, 20);
}

function signalsPending(): boolean {
  try {
    for (const tid of readdirSync('/proc/self/task')) {
      const st = readFileSync(`/proc/self/task/${tid}/status`, 'utf8');
      if (/^(SigPnd|ShdPnd):\s*0*[1-9a-f]/m.test(st)) return true;
    }
  } catch { /* a thread ended meanwhile */ }
  return false;
}

/**
 * With TSNAP_TEST_HOLD_AT=name:FILE, the main thread says so on stderr
 * ("tsnap: holding at NAME") and waits at `name` until FILE exists, while
 * tsnap's other threads run on: unlike a pause point, the copy-on-write
 * fault server keeps serving the target's writes meanwhile.
 */
export function holdPoint(name: string): void {
  const spec = process.env.TSNAP_TEST_HOLD_AT;
  if (!spec || !spec.startsWith(`${name}:`)) return;
  const file = spec.slice(name.length + 1);
  writeSync(2, `tsnap: holding at ${name}\n`);
  const nap = new Int32Array(new SharedArrayBuffer(4));
  while (!existsSync(file)) Atomics.wait(nap, 0, 0, 5);
}

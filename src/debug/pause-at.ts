/**
 * Test hook for killing tsnap at an exact step: with TSNAP_TEST_PAUSE_AT set
 * to a step's name, tsnap announces it on stderr ("tsnap: paused at NAME")
 * and blocks there for good, so that a test can SIGKILL it in that state.
 * Without the variable (production) it does nothing.
 */
import { writeSync } from 'node:fs';

export function pauseAt(step: string): void {
  if (process.env.TSNAP_TEST_PAUSE_AT !== step) return;
  writeSync(2, `tsnap: paused at ${step}\n`);
  // Synchronous on purpose: nothing of tsnap may run on (no timers, no handlers).
  const cell = new Int32Array(new SharedArrayBuffer(4));
  for (;;) Atomics.wait(cell, 0, 0);
}

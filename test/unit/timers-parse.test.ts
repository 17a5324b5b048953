/** /proc/PID/timers as Linux prints it: the notify line of a SIGEV_THREAD_ID timer. */
import { describe, it, expect } from 'vitest';
import { parseTimers } from '../../src/proc/timers.js';

describe('parseTimers', () => {
  it('reads "signal/tid.N" as a thread-directed timer and "signal/pid.N" as a process-directed one', () => {
    const text = [
      'ID: 0', 'signal: 32/000055d8e0d11460', 'notify: signal/tid.4242', 'ClockID: 1',
      'ID: 1', 'signal: 10/0000000000000063', 'notify: signal/pid.4241', 'ClockID: 0',
      'ID: 2', 'signal: 0/0000000000000000', 'notify: none/pid.4241', 'ClockID: 1',
    ].join('\n');
    expect(parseTimers(text).map((t) => [t.id, t.signo, t.notify, t.tid, t.clockid])).toEqual([
      [0, 32, 'thread', 4242, 1],
      [1, 10, 'signal', 4241, 0],
      [2, 0, 'none', 4241, 1],
    ]);
  });
});

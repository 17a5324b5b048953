/**
 * Where a dump's frozen time goes (DumpStats.frozenParts): the steps
 * between the freeze and the copy, timed on the main thread, with the
 * guardian requests and remote syscalls they took.
 */
import { Guardian } from '../sys/guardian.js';
import type { FrozenParts } from '../../formats/schema.js';

type Step = 'stateUs' | 'layoutUs' | 'processUs' | 'scanUs';

export class FrozenClock {
  private last = process.hrtime.bigint();
  private readonly calls0 = Guardian.counts.calls;
  private readonly syscalls0 = Guardian.counts.syscalls;
  private readonly parts: FrozenParts = { stateUs: 0, layoutUs: 0, processUs: 0, scanUs: 0, remoteSyscalls: 0, guardianCalls: 0 };

  lap(step: Step): void {
    const now = process.hrtime.bigint();
    this.parts[step] += Number(now - this.last) / 1000;
    this.last = now;
  }

  done(): FrozenParts {
    return { ...this.parts, remoteSyscalls: Guardian.counts.syscalls - this.syscalls0, guardianCalls: Guardian.counts.calls - this.calls0 };
  }
}

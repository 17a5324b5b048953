/** Exit statuses of interruptions: the signal's default action's, 128 + signo. */
import { describe, it, expect } from 'vitest';
import { interrupted, retellInterrupted, TsnapError, ExitCode } from '../../src/errors.js';

describe('interrupted', () => {
  it('exits 128 + signo for each abort signal', () => {
    expect(interrupted('SIGINT', 'x').exitCode).toBe(130);
    expect(interrupted('SIGTERM', 'x').exitCode).toBe(143);
    expect(interrupted('SIGHUP', 'x').exitCode).toBe(129);
    expect(interrupted('SIGTERM', 'x').kind).toBe('interrupted');
  });

  it('keeps the signal and its status when told from further up', () => {
    const e = retellInterrupted(interrupted('SIGTERM', 'inner'), (sig) => `the tree: ${sig}`);
    expect(e.message).toBe('the tree: SIGTERM');
    expect(e.exitCode).toBe(143);
  });

  it('other errors keep their kind\'s code', () => {
    expect(new TsnapError('noSpace', 'x').exitCode).toBe(ExitCode.noSpace);
  });
});

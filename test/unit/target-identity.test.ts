/** Which process an image is of: the start time it records, compared with the pid's now (dump/target-identity.ts). */
import { describe, it, expect } from 'vitest';
import { recordedStartTime, isSameProcess, refuseOtherProcess } from '../../src/dump/target-identity.js';
import { readStat } from '../../src/proc/index.js';
import { TsnapError } from '../../src/errors.js';
import type { Inventory } from '../../formats/schema.js';

const me = process.pid;
const now = readStat(me).startTime;
const inv = (extra: Partial<Inventory>): Inventory => ({
  formatVersion: 1, imageId: 'x', createdAt: 'now', tool: { name: 'tsnap', version: '0' }, kind: 'full', parent: null, pid: me,
  arch: 'x86_64', kernel: 'k', pageSize: 4096, chunkSize: 1 << 20, compression: 'none', files: {}, ...extra,
});
const tracking = (targetStartTime: number) => ({ holderPid: 1, holderStartTime: 1, targetPid: me, targetStartTime, mmId: 'none' });

describe('target identity', () => {
  it('the inventory\'s startTime first, else a pre-dump\'s tracking record, else unknown', () => {
    expect(recordedStartTime(inv({ startTime: 5, tracking: tracking(6) }))).toBe(5);
    expect(recordedStartTime(inv({ tracking: tracking(6) }))).toBe(6);
    expect(recordedStartTime(inv({ tracking: null }))).toBe(null);
  });

  it('the same process when the start times agree or one is unknown; another when they differ', () => {
    expect(isSameProcess(inv({ startTime: now }), me)).toBe(true);
    expect(isSameProcess(inv({}), me)).toBe(true); // an image of an older tsnap: taken as before
    expect(isSameProcess(inv({ tracking: tracking(now + 1) }), me)).toBe(false);
    expect(isSameProcess(inv({ startTime: now + 1 }), me)).toBe(false);
  });

  it('another process: one line, exit 3, naming the parent, the pid and both start times', () => {
    expect(() => refuseOtherProcess('/img/1', inv({ startTime: now }), me)).not.toThrow();
    let caught: unknown;
    try { refuseOtherProcess('/img/1', inv({ startTime: now - 1 }), me); } catch (e) { caught = e; }
    expect(caught).toBeInstanceOf(TsnapError);
    const e = caught as TsnapError;
    expect(e.exitCode).toBe(3);
    expect(e.message).not.toContain('\n');
    expect(e.message).toContain(`parent image /img/1 is of process ${me} started at tick ${now - 1}, which has exited: pid ${me} is now another process (started at tick ${now})`);
  });
});

/**
 * Giving a pid that has just been freed to another process: what a busy
 * host does to a dead process's pid sooner or later (pid_max is 32768
 * here), made to happen now, for tests of what tsnap does to "the same
 * pid" in a later round.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect } from 'vitest';
import { compileC } from './fixtures.js';
import { registerPid } from './processes.js';

/**
 * Starts `sleep 300` as exactly `pid` (fixture takepid: clone3 with
 * set_tid, which leaves the host's pid counter alone; ns_last_pid rewound
 * it for every other test running), in its own session with /dev/null as
 * stdio. The pid must be free (the caller reaped its owner); a zombie
 * still holding it gets a few seconds. Registered for the cleanup; the
 * caller kills it by pid.
 */
export async function takePid(pid: number): Promise<number> {
  const bin = await compileC('takepid');
  let out = '';
  for (let i = 0; i < 50; i++) {
    try {
      out = (await promisify(execFile)(bin, [String(pid)])).stdout;
    } catch (e) {
      out = String((e as { stdout?: string }).stdout ?? e);
    }
    if (out.startsWith('TOOK')) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  expect(out.trim(), `taking pid ${pid}`).toBe(`TOOK ${pid}`);
  registerPid(pid);
  return pid;
}

/**
 * The whole suite: every process it starts carries TSNAP_TEST_OWNER=<run>.<worker>
 * (test/helpers/processes.ts); at the end, one still alive fails the run.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { markedProcesses, isGone } from './helpers/processes.js';

export function setup(): () => Promise<void> {
  // Before any worker starts, so that all of them inherit it.
  const run = `r${randomBytes(6).toString('hex')}`;
  process.env.TSNAP_TEST_RUN = run;
  return async () => {
    const ours = (o: string) => o.startsWith(`${run}.`);
    let left = markedProcesses(ours);
    // Processes killed by the last test may not be gone yet.
    for (let i = 0; i < 30 && left.length; i++) {
      await new Promise((r) => setTimeout(r, 100));
      left = left.filter((pid) => !isGone(pid));
    }
    if (!left.length) return;
    const describe = (pid: number) => {
      let cmd = '?';
      try { cmd = readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').join(' ').trim(); } catch { /* gone */ }
      let ppid = '?';
      try { ppid = /^PPid:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '?'; } catch { /* gone */ }
      return `  pid ${pid} (parent ${ppid}): ${cmd}`;
    };
    const report = left.map(describe).join('\n');
    for (const pid of left) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
    process.exitCode = 1;
    throw new Error(`the test suite left ${left.length} process(es) running (now killed):\n${report}`);
  };
}

/**
 * The whole suite: every process it starts carries TSNAP_TEST_OWNER=<run>.<worker>
 * (test/helpers/processes.ts); at the end, one still alive fails the run.
 *
 * And no file of tsnap's own is left in /dev/shm or the temporary directory
 * (docs/reliability.md section 8): of the entries that appeared during the
 * run, those named after a tsnap (src/migrate/scratch-dir.ts) whose tsnap
 * was killed are what the next tsnap sweeps; the sweep runs here as that
 * next tsnap would, and one it cannot remove fails the run. Another
 * tsnap's live directory (another suite's, a bench's) is left alone; a
 * nameful helper file of an older tsnap (tsnap-XXXXXX, which this code no
 * longer makes) is only reported: on a shared machine it is someone else's.
 */
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { markedProcesses, isGone } from './helpers/processes.js';
import { isScratchName, scratchOwnerLives, sweepStale } from '../src/migrate/scratch-dir.js';

const SCRATCH_BASES = [...new Set(['/dev/shm', tmpdir()])];

function tsnapEntries(): Set<string> {
  const out = new Set<string>();
  for (const b of SCRATCH_BASES) {
    try { for (const n of readdirSync(b)) if (n.startsWith('tsnap-')) out.add(join(b, n)); } catch { /* no such base */ }
  }
  return out;
}

/** What tsnap left during the run that no later tsnap would remove; throws naming it. */
function checkScratch(before: Set<string>): void {
  const appeared = () => [...tsnapEntries()].filter((p) => !before.has(p));
  const named = appeared().filter((p) => isScratchName(p.slice(p.lastIndexOf('/') + 1)));
  if (!named.length) return;
  const swept = SCRATCH_BASES.flatMap((b) => sweepStale(b)).filter((p) => named.includes(p));
  if (swept.length) console.log(`tsnap scratch: ${swept.length} directory(ies) of killed tsnaps swept, as the next migrate or serve would`);
  const left = appeared().filter((p) => named.includes(p) && !scratchOwnerLives(p));
  if (left.length) {
    process.exitCode = 1;
    throw new Error(`the test suite left ${left.length} tsnap scratch entry(ies) that no sweep removes:\n${left.map((p) => `  ${p}`).join('\n')}`);
  }
}

function reportOld(before: Set<string>): void {
  const old = [...tsnapEntries()].filter((p) => !before.has(p) && /\/tsnap-(migrate-)?[A-Za-z0-9]{6}$/.test(p));
  if (old.length) console.log(`tsnap scratch: ${old.length} nameful entry(ies) of an older tsnap appeared during the run (not this code's; another run on this machine?): ${old.join(' ')}`);
}

export function setup(): () => Promise<void> {
  // Before any worker starts, so that all of them inherit it.
  const run = `r${randomBytes(6).toString('hex')}`;
  process.env.TSNAP_TEST_RUN = run;
  const scratchBefore = tsnapEntries();
  return async () => {
    // Both checks run; the first failure is the one thrown.
    const failures: unknown[] = [];
    await processesCheck(run).catch((e: unknown) => failures.push(e));
    try {
      reportOld(scratchBefore);
      checkScratch(scratchBefore);
    } catch (e) {
      failures.push(e);
    }
    if (failures.length) throw failures[0];
  };
}

async function processesCheck(run: string): Promise<void> {
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
}

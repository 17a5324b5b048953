/**
 * `tsnap serve --restore` restores one throwaway process before it listens.
 *
 * A receiver's restore after COMMITTED is downtime, and the first restore
 * a tsnap process runs is its slowest: V8 compiles each function on its
 * first call, koffi builds each binding on first use, the image decoder
 * and the self-check's /proc parsers run cold. Measured on one serve
 * process, two 64 MiB migrations in a row: 24.6 ms from COMMITTED to
 * running for the first, 12.4 ms for the second. So serve runs the whole
 * path once at start: it spawns `sleep`, dumps it (leave-running), restores
 * the image under a new pid, and kills both. That also proves, before any
 * migration is accepted, that this host can restore at all: a failure is
 * told (as a warning: the migrations still come) rather than found out at
 * the first commit.
 *
 * Nothing is left: both processes are killed and reaped by their pids, the
 * image is removed, the guardian the dump started is let go. A serve killed in the middle leaves at most a sleeping
 * `sleep` in its own session, and the image, which the next serve or migrate removes (scratch-dir.ts).
 */
import { openSync, closeSync, accessSync, constants } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { posixSpawn, kill, SIGKILL, ptrace } from '../sys/index.js';
import { Guardian } from '../sys/guardian.js';
import { dump } from '../dump/dump.js';
import { restore } from '../restore/restore.js';
import { warmUpLazy } from '../lazy/warm-up-lazy.js';
import { makeScratchDir } from './scratch-dir.js';
import { pausePoint } from '../fault-points.js';

const SLEEP = ['/usr/bin/sleep', '/bin/sleep'];

function scratchBase(): string {
  try {
    accessSync('/dev/shm', constants.W_OK);
    return '/dev/shm';
  } catch {
    return tmpdir();
  }
}

function endChild(pid: number): void {
  try { kill(pid, SIGKILL); } catch { return; }
  try { ptrace.waitpidBlocking(pid); } catch { /* not ours to reap, or reaped */ }
}

/** Returns how long the warm-up took, in ms; throws what stopped it. */
export async function warmUpRestore(): Promise<number> {
  const t0 = process.hrtime.bigint();
  const sleep = SLEEP.find((p) => { try { accessSync(p, constants.X_OK); return true; } catch { return false; } });
  if (!sleep) throw new Error('no sleep binary to warm up with (looked for /usr/bin/sleep and /bin/sleep)');
  const scratch = makeScratchDir(scratchBase(), 'warm-up', ['/dev/shm', tmpdir()]);
  const dir = scratch.path;
  const devNull = openSync('/dev/null', 'r+');
  const pids: number[] = [];
  // A receiver's restores need no guardian: the one the warm-up's dump
  // starts would live as long as serve, holding nothing.
  const hadGuardian = Guardian.running;
  try {
    pids.push(posixSpawn(sleep, ['3600'], [devNull, devNull, devNull], true));
    const img = join(dir, 'img');
    await dump({ pid: pids[0], dir: img, leaveRunning: true, fsync: false });
    pausePoint('serve-warm-up-dumped');
    const r = await restore({ dir: img, newPid: true, stdout: '/dev/null', stderr: '/dev/null' });
    pids.push(r.pid);
    await warmUpLazy(img, pids);
  } finally {
    for (const pid of pids.reverse()) endChild(pid);
    if (!hadGuardian) Guardian.shutdown();
    closeSync(devNull);
    scratch.remove();
  }
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

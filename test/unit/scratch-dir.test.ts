/**
 * The sweep of stale scratch directories (src/migrate/scratch-dir.ts)
 * removes exactly the directories of tsnaps that are gone: never a live
 * one's (by its lock, also when its pid means nothing here), never through
 * a symlink, never what is not a 0700 directory of this uid.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeScratchDir, sweepStale } from '../../src/migrate/scratch-dir.js';
import { readStat } from '../../src/proc/index.js';

const bases: string[] = [];
afterAll(() => { for (const b of bases) rmSync(b, { recursive: true, force: true }); });

function base(): string {
  const b = mkdtempSync(join(tmpdir(), 'scratch-sweep-'));
  bases.push(b);
  return b;
}

/** A pid that named a process a moment ago and names none now. */
function deadPid(): number {
  return spawnSync('true').pid!;
}

const ownStart = readStat(process.pid).startTime;

function dir(b: string, name: string, mode = 0o700): string {
  const p = join(b, name);
  mkdirSync(p, { mode });
  writeFileSync(join(p, 'pagemap'), 'secret', { mode: 0o600 });
  return p;
}

describe('scratch directories', () => {
  it('removes the stale, keeps the live, the foreign and the odd', async () => {
    const b = base();
    const dead = deadPid();
    const stale = dir(b, `tsnap-migrate-${dead}.12345-aaaaaa`);
    const reused = dir(b, `tsnap-warm-up-${process.pid}.${ownStart + 1}-bbbbbb`); // our pid, another start time: its owner is gone
    const live = dir(b, `tsnap-migrate-${process.pid}.${ownStart}-cccccc`); // unlocked, but its owner lives (the instant before flock)
    const open = dir(b, `tsnap-migrate-${dead}.1-dddddd`, 0o755);
    const foreign = dir(b, `tsnap-migrate-${dead}.1-eeeeee`);
    chownSync(foreign, 65534, 65534);
    const old = dir(b, 'tsnap-migrate-ffffff'); // an older tsnap's: no owner in its name
    const outside = dir(base(), 'target');
    symlinkSync(outside, join(b, `tsnap-migrate-${dead}.1-gggggg`));
    writeFileSync(join(b, `tsnap-migrate-${dead}.1-hhhhhh`), 'a file');
    // Held by a live process whose pid here says nothing (another pid namespace): its lock says it lives.
    const held = dir(b, `tsnap-migrate-${dead}.1-iiiiii`);
    // One process, no child: killing it (by pid) frees the lock.
    const holder = spawn('python3', ['-c', 'import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print("locked", flush=True); time.sleep(60)', held], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      await new Promise((r) => holder.stdout!.once('data', r));
      const seen: string[] = [];
      const removed = sweepStale(b, (kind, path) => seen.push(`${kind} ${path}`));
      expect(removed.sort()).toEqual([stale, reused].sort());
      expect(seen.sort()).toEqual([`migrate ${stale}`, `warm-up ${reused}`].sort());
      for (const p of [live, open, foreign, old, held, join(b, `tsnap-migrate-${dead}.1-hhhhhh`)]) expect(existsSync(p), p).toBe(true);
      expect(existsSync(join(outside, 'pagemap'))).toBe(true);
    } finally {
      holder.kill('SIGKILL');
      await new Promise((r) => holder.once('exit', r));
    }
    // Its holder gone, the lock is free: a directory whose owner is gone goes.
    expect(sweepStale(b)).toEqual([held]);
  });

  it('makes 0700 directories named after this tsnap, locked while they live, and sweeps before', () => {
    const b = base();
    const stale = dir(b, `tsnap-migrate-${deadPid()}.7-zzzzzz`);
    const s = makeScratchDir(b, 'migrate');
    expect(existsSync(stale)).toBe(false);
    expect(s.path).toMatch(new RegExp(`/tsnap-migrate-${process.pid}\\.${ownStart}-\\w{6}$`));
    expect(statSync(s.path).mode & 0o7777).toBe(0o700);
    // Locked: another open file (another tsnap) cannot take it.
    expect(spawnSync('flock', ['-n', s.path, 'true']).status).not.toBe(0);
    expect(sweepStale(b)).toEqual([]);
    s.remove();
    s.remove();
    expect(readdirSync(b)).toEqual([]);
  });
});

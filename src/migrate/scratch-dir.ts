/**
 * Scratch directories a tsnap makes for itself: a migration's staged
 * rounds (sender.ts), serve's warm-up image (warm-up.ts). They may hold a
 * process's pages, so none may outlive its tsnap, but a tsnap SIGKILLed (or
 * OOM-killed) runs no cleanup. A directory cannot be nameless the way the
 * tiny programs are (tiny-elf.ts loadProgram: files cannot be made in a
 * removed directory), so each carries its owner and is swept by the next
 * tsnap that makes one:
 *
 *   <base>/tsnap-<kind>-<pid>.<start time>-XXXXXX, mode 0700,
 *
 * held with flock() by the tsnap that made it for as long as it lives (the
 * kernel drops the lock with the process, however it ends). A sweep
 * removes an entry only when its lock is free *and* its pid does not name a
 * live process with that start time: the lock alone is free for the few
 * microseconds between mkdtemp and flock; the pid alone is wrong for a
 * tsnap in another pid namespace that shares the base (a serve run under
 * `unshare --pid`). A migration's staging first ends the tracking its
 * rounds started (endWhatItRefersTo). It never follows a symlink (O_NOFOLLOW, and rm of a
 * link removes the link) and leaves alone whatever is not a 0700 directory
 * of this uid.
 */
import { closeSync, fstatSync, mkdtempSync, openSync, readdirSync, rmSync, constants } from 'node:fs';
import { basename, join } from 'node:path';
import { flock, LOCK_EX, LOCK_NB } from '../sys/index.js';
import { readStat } from '../proc/index.js';
import { trackingRefs } from '../image/process-dirs.js';
import { stopHolder } from '../track/holder.js';

const NAME = /^tsnap-([a-z][a-z-]*)-(\d+)\.(\d+)-[A-Za-z0-9]{6}$/;

let self: string | null = null;
const owner = () => (self ??= `${process.pid}.${readStat(process.pid).startTime}`);

export interface ScratchDir {
  readonly path: string;
  /** Removes it (and all inside) and lets its lock go; once. */
  remove(): void;
}

/** What a sweep does with a stale directory of `kind` before removing it (ends what it refers to). */
export type OnStale = (kind: string, path: string) => void;

/**
 * A migration whose tsnap was killed left its rounds committed in staging,
 * and so their tracking (a committed pre-dump's holder outlives its tsnap):
 * once the staging goes, no image refers to it, so it ends too. Whoever
 * sweeps (a migrate, a serve's warm-up, the test suite) does this.
 */
export const endWhatItRefersTo: OnStale = (kind, path) => {
  if (kind !== 'migrate') return;
  for (const round of readdirSync(path)) {
    try {
      for (const ref of trackingRefs(join(path, round))) stopHolder(ref);
    } catch { /* not a round, or one cut short */ }
  }
};

/** A new scratch directory in `base`, after sweeping the stale ones of `sweep` (default: `base`). */
export function makeScratchDir(base: string, kind: string, sweep: string[] = [base], onStale: OnStale = endWhatItRefersTo): ScratchDir {
  for (const b of new Set(sweep)) sweepStale(b, onStale);
  for (let attempt = 0; ; attempt++) {
    const path = mkdtempSync(join(base, `tsnap-${kind}-${owner()}-`));
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
      // Blocking: a sweep that took it meanwhile lets it go within microseconds.
      flock(fd, LOCK_EX);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && attempt < 3) continue;
      rmSync(path, { recursive: true, force: true });
      throw err;
    }
    // Removed before our lock by a sweep to which our pid means nothing (another pid namespace): another one.
    if (fstatSync(fd).nlink === 0 && attempt < 3) {
      closeSync(fd);
      continue;
    }
    return locked(path, fd);
  }
}

function locked(path: string, fd: number): ScratchDir {
  let done = false;
  return {
    path,
    remove: () => {
      if (done) return;
      done = true;
      // Removed before the lock goes: a sweep never sees it unlocked while it is ours.
      try { rmSync(path, { recursive: true, force: true }); } finally { closeSync(fd); }
    },
  };
}

/** Removes the scratch directories in `base` whose tsnap is gone; returns their paths. */
export function sweepStale(base: string, onStale: OnStale = endWhatItRefersTo): string[] {
  let names: string[];
  try { names = readdirSync(base); } catch { return []; }
  const removed: string[] = [];
  for (const name of names) {
    const m = NAME.exec(name);
    if (!m) continue;
    const path = join(base, name);
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    } catch {
      continue; // a symlink, not a directory, or gone meanwhile
    }
    try {
      const st = fstatSync(fd);
      if (st.uid !== process.geteuid!() || (st.mode & 0o7777) !== 0o700) continue;
      if (!flock(fd, LOCK_EX | LOCK_NB)) continue; // its tsnap holds it
      if (ownerAlive(Number(m[2]), Number(m[3]))) continue;
      try { onStale(m[1], path); } catch { /* removed all the same: nothing else will */ }
      rmSync(path, { recursive: true, force: true });
      removed.push(path);
    } catch {
      /* another sweep removed it first, or it is not ours to remove */
    } finally {
      closeSync(fd);
    }
  }
  return removed;
}

/** Whether the directory at `path` (one of makeScratchDir's names) belongs to a tsnap that lives: its lock is held, or its pid is its owner's. */
export function scratchOwnerLives(path: string): boolean {
  const m = NAME.exec(basename(path));
  if (!m) return false;
  let fd: number;
  try { fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW); } catch { return false; }
  try {
    return !flock(fd, LOCK_EX | LOCK_NB) || ownerAlive(Number(m[2]), Number(m[3]));
  } finally {
    closeSync(fd);
  }
}

/** The names makeScratchDir gives. */
export const isScratchName = (name: string): boolean => NAME.test(name);

function ownerAlive(pid: number, startTime: number): boolean {
  try {
    const st = readStat(pid);
    return st.startTime === startTime && st.state !== 'Z' && st.state !== 'X';
  } catch {
    return false;
  }
}

/**
 * Keeping tracking alive between tsnap runs. The target's userfaultfd lives
 * as long as one copy of it is open; when the last copy closes, the kernel
 * unregisters every range and forgets all write-protection. So a copy must
 * outlive each `tsnap pre-dump`.
 *
 * tsnap starts a *holder*: the tiny program of tiny-elf.ts, in its own
 * session, with fd 3 = a pidfd of the target, fd 4 = the uffd and fd 5 = the
 * read end of a commit pipe. It sleeps in poll() on the pidfd and exits when
 * the target exits — so a forgotten tracking never outlives its target. It
 * also exits when the pipe reaches end-of-file before tsnap wrote a byte
 * into it, which tsnap does only once an image naming the holder is
 * committed: a tsnap killed before that (even by SIGKILL) takes the tracking
 * with it, since no image could ever refer to it. The next tsnap run takes
 * its own copy of fd 4 with pidfd_getfd(); `tsnap untrack` or the final dump
 * kill it.
 *
 * Why not park the uffd in the target itself: the program could close it
 * (daemons close_range() their fds) or see it in /proc/self/fd, and every
 * image would have to skip it.
 */
import { teardownAtIdle, teardownAtNormal } from '../freeze/idle-teardown.js';
import { spawn } from 'node:child_process';
import { readFileSync, readlinkSync } from 'node:fs';
import { pidfdOpen, pidfdGetfd, pipe2, O_CLOEXEC, SysError } from '../sys/index.js';
import { readStat } from '../proc/index.js';
import { loadProgram, holderElf, HOLDER_NAME } from '../inject/tiny-elf.js';
import { closeSync, writeSync } from 'node:fs';
import { removeState } from './state.js';
import type { TrackingRef } from '../../formats/schema.js';

export { HOLDER_NAME } from '../inject/tiny-elf.js';
const HOLDER_UFFD_FD = 4;

export interface StartedHolder {
  pid: number;
  startTime: number;
  /** Write end of the commit pipe: commitHolder() once an image names the holder. */
  commitFd: number;
}

export async function startHolder(targetPid: number, targetPidfd: number, uffd: number): Promise<StartedHolder> {
  const file = loadProgram(HOLDER_NAME, holderElf());
  // Close-on-exec: no other program tsnap starts may keep the holder uncommitted-but-alive.
  const [commitRead, commitFd] = pipe2(O_CLOEXEC);
  try {
    // argv[0] is how untrack and the next round know a holder (its path is /proc/PID/fd/N).
    const child = spawn(file.path, [String(targetPid)], {
      argv0: HOLDER_NAME,
      stdio: ['ignore', 'ignore', 'ignore', targetPidfd, uffd, commitRead],
      detached: true,
    });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
    child.unref();
    const pid = child.pid!;
    return { pid, startTime: readStat(pid).startTime, commitFd };
  } catch (err) {
    closeSync(commitFd);
    throw err;
  } finally {
    closeSync(commitRead);
    file.remove();
  }
}

/** Tells a holder that an image naming it is committed: from now on it outlives this tsnap. */
export function commitHolder(commitFd: number): void {
  try {
    writeSync(commitFd, Buffer.from([1]));
  } finally {
    closeSync(commitFd);
  }
}

export type HolderLookup = { fd: number } | { lost: string };

/** A copy of the tracked uffd, or why tracking is gone. */
export function takeUffd(ref: TrackingRef): HolderLookup {
  const { holderPid } = ref;
  let start: number;
  try {
    const st = readStat(holderPid);
    if (st.state === 'Z' || st.state === 'X') return { lost: `its holder process ${holderPid} is gone` };
    start = st.startTime;
  } catch {
    return { lost: `its holder process ${holderPid} is gone` };
  }
  if (start !== ref.holderStartTime) return { lost: `its holder process ${holderPid} is gone (the pid was reused)` };
  try {
    const argv = readFileSync(`/proc/${holderPid}/cmdline`, 'utf8').split('\0');
    if (!argv[0].endsWith(HOLDER_NAME) || argv[1] !== String(ref.targetPid)) return { lost: `pid ${holderPid} is not its holder` };
    if (readlinkSync(`/proc/${holderPid}/fd/${HOLDER_UFFD_FD}`) !== 'anon_inode:[userfaultfd]') return { lost: 'its holder lost the userfaultfd' };
  } catch {
    return { lost: `its holder process ${holderPid} is gone` };
  }
  const pidfd = pidfdOpen(holderPid);
  try {
    return { fd: pidfdGetfd(pidfd, HOLDER_UFFD_FD) };
  } catch (err) {
    if (err instanceof SysError) return { lost: `cannot take the userfaultfd from holder ${holderPid} (${err.code})` };
    throw err;
  } finally {
    closeSync(pidfd);
  }
}

const napCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Kills a holder and waits until it is dead (a zombie at most): only then
 * has its copy of the uffd been closed, and tracking really ended.
 */
export function killHolder(pid: number): void {
  removeState(pid);
  try { process.kill(pid, 'SIGKILL'); } catch { return; }
  awaitHolderGone(pid);
}

/** Waits (at most ~1 s) until a killed holder is dead, a zombie at most. */
function awaitHolderGone(pid: number): void {
  for (let i = 0; i < 1000; i++) {
    try {
      const st = readStat(pid).state;
      if (st === 'Z' || st === 'X') return;
    } catch {
      return;
    }
    Atomics.wait(napCell, 0, 0, 1);
  }
}

/**
 * Ends tracking without waiting for it: the holder is sent SIGKILL. The
 * kernel closes the holder's uffd (and unregisters the target's memory)
 * some milliseconds after the signal, at the lowest priority: it runs
 * beside the frozen round's last steps. `release` (the target runs on)
 * waits for its death, at normal priority again; `forget` (the target is
 * killed anyway) does not. Either drops the holder's record, off the
 * frozen window. Null: no such holder.
 */
export function signalHolder(ref: TrackingRef): { release: () => void; forget: () => void } | null {
  try {
    if (readStat(ref.holderPid).startTime !== ref.holderStartTime) return null;
  } catch {
    return null;
  }
  const pid = ref.holderPid;
  teardownAtIdle([pid]);
  try { process.kill(pid, 'SIGKILL'); } catch { removeState(pid); return null; }
  return {
    release: () => {
      teardownAtNormal([pid]);
      awaitHolderGone(pid);
      removeState(pid);
    },
    forget: () => removeState(pid),
  };
}

/**
 * A holder left running until its target's frozen set ends (post-copy:
 * the page service reads the frozen target meanwhile). Killed with the
 * target (`forget`, right after the target's SIGKILL: a holder whose
 * target's memory is gone by then unregisters nothing), or ended and waited
 * for before the target runs on (`release`).
 */
export function holderEndingWithTheSet(ref: TrackingRef): { release: () => void; forget: () => void } {
  return {
    release: () => {
      if (!stopHolder(ref)) removeState(ref.holderPid);
    },
    forget: () => {
      const ending = signalHolder(ref);
      if (ending) ending.forget();
      else removeState(ref.holderPid);
    },
  };
}

/** Ends tracking: the holder's copy is the last long-lived one. */
export function stopHolder(ref: TrackingRef): boolean {
  try {
    if (readStat(ref.holderPid).startTime !== ref.holderStartTime) return false;
  } catch {
    return false;
  }
  killHolder(ref.holderPid);
  return true;
}

/**
 * Starting the restore helper (create-process.ts) before the image is read.
 *
 * The helper's start is mostly waiting: posix_spawn returns once it has
 * exec'd, and then it must be scheduled to reach pause(), which tsnap polls
 * for. On a loaded machine that is 3-11 ms of a lazy restore's time to
 * running, while reading and checking the image (another 10-25 ms there)
 * keeps tsnap's own thread busy. Started first, the helper gets there
 * meanwhile. What it needs is the pid to clone at, which the inventory
 * says; the clone itself runs only once restore() awaits the helper, after
 * the image read and the preflight.
 *
 * A restore that fails before it awaits the helper abandons it: the helper
 * stops before it clones (the clone runs only when restore() awaits it)
 * and is killed and reaped, as for any failed restore. Trees,
 * live builds and inventories that cannot be read go the old way (helper
 * after the image): the restore then reports what is wrong with the image.
 * TSNAP_EARLY_HELPER=0 turns it off (bench A/B).
 */
import type { StdioOptions } from 'node:child_process';
import { createProcess, type NewProcess, type Helper } from './create-process.js';
import { readMetaFile } from '../image/metadata.js';
import { isTreeImage } from '../image/tree-manifest.js';
import { FileKind, type Inventory } from '../../formats/schema.js';
import { kill, SIGKILL, type SpawnSched } from '../sys/index.js';
import { reapTraced } from '../freeze/frozen-process.js';

export interface EarlyHelper {
  /** The pid the clone is made at (null: any). */
  readonly pid: number | null;
  readonly making: Promise<{ proc: NewProcess; helper: Helper }>;
  /** The restore will not use it: kill and reap whatever it made; settles once that is done. */
  abandon(): Promise<void>;
}

/** `sched`: as createProcess's. */
export function startHelperEarly(dir: string, newPid: boolean, stdio: StdioOptions, sched?: SpawnSched): EarlyHelper | null {
  if (process.env.TSNAP_EARLY_HELPER === '0' || isTreeImage(dir)) return null;
  let pid: number | null = null;
  if (!newPid) {
    try {
      pid = readMetaFile<Inventory>(dir, FileKind.Inventory).pid;
    } catch {
      return null;
    }
  }
  let abandoned = false;
  const making = createProcess(pid, stdio, () => abandoned, sched);
  return {
    pid,
    making,
    abandon: () => {
      // Asked before the clone: an abandoned restore never makes a process at the pid.
      abandoned = true;
      return abandonMaking(making);
    },
  };
}

/**
 * Kills and reaps what `making` made (or will have made). A failing restore
 * awaits it before it reports: a helper left to die after tsnap exits would
 * linger as init's zombie (reaped 1.3-2 s late on this machine kind).
 */
export function abandonMaking(making: Promise<{ proc: NewProcess; helper: Helper }>): Promise<void> {
  return making.then((m) => {
    m.helper.kill('SIGKILL');
    try { kill(m.proc.pid, SIGKILL); } catch { /* gone */ }
    reapTraced(m.proc.pid);
  }, () => { /* it failed: nothing was made */ });
}

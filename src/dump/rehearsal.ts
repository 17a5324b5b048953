/**
 * A rehearsal of a dump's frozen steps, for a final round whose frozen
 * time is someone's downtime (a migration's).
 *
 * The first run of the state, layout and image code in a tsnap process
 * costs several times a later one: V8 compiles each function on its first
 * call and optimises it later, koffi builds a binding on first use, the
 * metadata encoder learns its shapes. Measured on one process: the state
 * step took 15.7 ms cold and 4.5 ms warm. A migration's final dump is the
 * first full dump its sender runs, so all of that lands in the downtime.
 *
 * The rehearsal runs those steps once, early, on the running target,
 * stopped as briefly as a leave-running dump stops it, and throws the
 * result away. Nothing it does outlives it: the process is released (the
 * frozen set's safety net covers a signal or a crash), no file is taken
 * (fds are left to the real round), nothing is written.
 */
import { ProcMem } from '../sys/index.js';
import { FrozenSet } from '../freeze/frozen-set.js';
import { collectRemoteState } from '../state/task-state.save.js';
import { readLayout, assembleProcess } from './process-state.js';
import { packr } from '../image/metadata.js';
import { mark } from '../trace.js';

/** Returns how long the target was stopped, in µs. */
/** `stillTarget` throws when the process meant has ended (its pid may be a stranger's): checked once it is frozen. */
export function rehearseFrozenSteps(pid: number, stillTarget: () => void = () => {}): number {
  mark('rehearsal: freezing');
  const set = FrozenSet.freeze(pid);
  let mem: ProcMem;
  try {
    stillTarget();
    mem = new ProcMem(pid);
  } catch (err) {
    set.release();
    throw err;
  }
  try {
    const remote = collectRemoteState(set.processes[0], mem);
    const layout = readLayout(pid);
    packr.pack(assembleProcess(pid, remote, layout, []));
    return set.frozenUs();
  } finally {
    mem.close();
    set.release();
    mark('rehearsal: released');
  }
}

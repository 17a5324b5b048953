/**
 * The other threads of a restored process. Once the address space is built,
 * the leader clones each thread with clone3 (set_tid = its original tid);
 * PTRACE_O_TRACECLONE makes every clone our tracee, stopped before its
 * first instruction. Each thread then registers its own per-thread kernel
 * state (alternate stack, clear-child-tid, robust list, rseq) through the
 * stub's syscall instruction and gets its registers as the last step.
 */
import { ptrace, PTRACE_O, PTRACE_O_TRACECLONE, CLONE_THREAD_FLAGS } from '../sys/index.js';
import { FrozenTask } from '../freeze/frozen-task.js';
import { RemoteSyscaller } from '../inject/remote-syscall.js';
import { RemoteTask } from '../inject/remote-task.js';
import { cloneIn } from './create-process.js';
import type { ThreadImage } from '../../formats/schema.js';

export interface RestoredThread {
  image: ThreadImage;
  rt: RemoteTask;
}

/**
 * Creates the threads of `images` (the leader excluded) inside the task of
 * `leader`. `created` receives each new tid as soon as it exists, so the
 * caller can reap them should a later one fail.
 */
export function createThreads(leader: RemoteTask, images: ThreadImage[], newTids: boolean, created: number[]): RestoredThread[] {
  if (images.length === 0) return [];
  ptrace.setOptions(leader.pid, PTRACE_O.TRACESYSGOOD | PTRACE_O.EXITKILL | PTRACE_O_TRACECLONE);
  const out: RestoredThread[] = [];
  for (const image of images) {
    // Exit signal 0, as a thread's must; no stack: the thread is stopped
    // before it runs and gets its own rsp from the image.
    const tid = cloneIn(leader.sc, leader.scratch, CLONE_THREAD_FLAGS, 0, newTids ? null : image.tid, `clone3(thread ${image.tid})`);
    created.push(tid);
    const task = FrozenTask.adopt(tid);
    const rt = new RemoteTask(new RemoteSyscaller(task, leader.mem, leader.sc.gadget), leader.mem);
    rt.sc.trapAfter = leader.sc.trapAfter;
    rt.scratch = leader.scratch;
    rt.scratchSize = leader.scratchSize;
    rt.batchArea = leader.batchArea;
    out.push({ image, rt });
  }
  return out;
}

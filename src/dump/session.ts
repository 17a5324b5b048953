/**
 * One dump session: the processes one image is taken of (one process or a
 * tree; frozen for a dump, running for a pre-dump), everything held on
 * their behalf, and the one way it all ends.
 *
 * The session owns its frozen set and, attached to it, the sockets it put
 * in TCP repair mode: they end with the processes (closed silently with a
 * killed one, out of repair mode with one that runs on), never with
 * another session's. Each step of the dump registers its undo as it goes
 * (src/dump/cleanup.ts); a failure lets the processes run on first, then
 * unwinds the rest. Once the image is committed, finish() drops the undos
 * and ends the processes: kill, release, or hold (handed, still frozen, to
 * a caller such as a migration, which finishes the set itself).
 */
import { FrozenSet, type Finish } from '../freeze/frozen-set.js';
import { FrozenProcess } from '../freeze/frozen-process.js';
import type { FreezeOptions } from '../freeze/frozen-task.js';
import { RepairSession } from '../files/tcp.js';
import { CleanupStack, type Undo } from './cleanup.js';

/** What an image step needs of its session: where its undos go, and where its repaired sockets belong. */
export interface SessionScope {
  readonly repair: RepairSession;
  onFailure(undo: Undo): void;
}

export class DumpSession implements SessionScope {
  readonly set: FrozenSet;
  /** The TCP connections this session took out of service (files/tcp.ts). */
  readonly repair = new RepairSession();
  private readonly undo = new CleanupStack();
  private committed = false;

  /** Its set starts empty: a dump freezes into it (freeze(), or a tree top-down); a pre-dump leaves it so. */
  constructor() {
    this.set = new FrozenSet();
    this.set.attach(this.repair);
  }

  /** Freezes one process into the session's set. */
  freeze(pid: number, opts: FreezeOptions = {}): FrozenProcess {
    const fp = FrozenProcess.freeze(pid, opts);
    this.set.add(fp);
    return fp;
  }

  /** Runs if the session fails, after its processes run on again; newest first. */
  onFailure(undo: Undo): void {
    this.undo.defer(undo);
  }

  /**
   * A scope for one member's step: undone on its own should the session go
   * on without that member (a process of a running tree that exited during
   * its pre-dump), and with the session otherwise.
   */
  member(): MemberScope {
    const m = new MemberScope(this.repair);
    this.undo.defer(() => m.unwind());
    return m;
  }

  /**
   * The point of no return: the image is complete and kept. Nothing
   * registered is undone any more; the processes end as `how` says.
   */
  finish(how: Finish): FrozenSet | null {
    this.commit();
    return this.set.isFinished ? null : this.set.finish(how);
  }

  /** Keeps the image without ending the processes yet (a tree commits first, then finishes). */
  commit(): void {
    this.committed = true;
    this.undo.drop();
  }

  /**
   * The session failed: its processes run on as before (their repair mode
   * lifted with them), then every step is undone. Safe more than once.
   */
  async fail(): Promise<void> {
    try { this.set.release(); } catch { /* gone */ }
    // Attached to the set, but a set that already ended no longer releases it.
    this.repair.release();
    // A committed image stays: only what came after it failed.
    if (!this.committed) await this.undo.unwind();
  }
}

export class MemberScope implements SessionScope {
  private readonly undo = new CleanupStack();

  constructor(readonly repair: RepairSession) {}

  onFailure(undo: Undo): void {
    this.undo.defer(undo);
  }

  /** Undoes this member's steps (once: the session's unwind finds nothing left). */
  unwind(): Promise<void> {
    return this.undo.unwind();
  }
}

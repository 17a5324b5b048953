/**
 * The processes one command holds frozen — one process or a whole tree —
 * and the one way they end, all together: killed, released, or handed on
 * still frozen to a caller who ends them later (a migration, once the
 * receiver has committed).
 *
 * Killing is for after the image naming every process is committed; any
 * earlier end (a failure, a signal) must be a release. Half a tree is never
 * killed: every process gets its SIGKILL before any is reaped, and a
 * failure to reach one does not spare the others.
 */
import { kill, SIGKILL } from '../sys/index.js';
import { FrozenProcess } from './frozen-process.js';
import { hold, unhold, type Releasable } from './safety-net.js';

export type Finish = 'kill' | 'release' | 'hold';

/** Something that ends with the processes, e.g. sockets held in TCP repair mode. */
export interface Attached {
  /** The processes run on: put it back as it was. */
  release(): void;
  /** The processes are killed: drop it without a trace. */
  forget(): void;
  /** After forget(): whoever took the image over is done with what forget() handed on to it. */
  settle?(): void;
}

export class FrozenSet implements Releasable {
  /** Parents before children (tree order); released children first. */
  private readonly procs: FrozenProcess[] = [];
  private readonly attached: Attached[] = [];
  /** Forgotten by the kill, with something handed on that settle() ends. */
  private readonly handedOn: Attached[] = [];
  private ended: 'released' | 'killed' | null = null;
  /** Set when the first process is added. */
  frozenAt: bigint | null = null;

  constructor() {
    // Until finished, the exit hook lets everything go should tsnap end abruptly.
    hold(this);
  }

  static freeze(pid: number): FrozenSet {
    const set = new FrozenSet();
    try {
      set.add(FrozenProcess.freeze(pid));
    } catch (err) {
      set.release();
      throw err;
    }
    return set;
  }

  add(fp: FrozenProcess): void {
    this.frozenAt ??= fp.frozenAt;
    this.procs.push(fp);
  }

  /** Takes out a process that exited meanwhile (it ends as a killed one: our view of it is reaped). */
  drop(fp: FrozenProcess): void {
    const i = this.procs.indexOf(fp);
    if (i >= 0) this.procs.splice(i, 1);
    fp.kill();
  }

  attach(a: Attached): void {
    this.attached.push(a);
  }

  get processes(): readonly FrozenProcess[] {
    return this.procs;
  }

  get isFinished(): boolean {
    return this.ended !== null;
  }

  frozenUs(): number {
    return this.frozenAt === null ? 0 : Number(process.hrtime.bigint() - this.frozenAt) / 1000;
  }

  /**
   * The one end of a frozen set. 'hold' keeps everything frozen and returns
   * the set for its new owner to finish; the others return null.
   */
  finish(how: Finish): FrozenSet | null {
    if (how === 'hold') return this;
    if (how === 'kill') this.kill();
    else this.release();
    return null;
  }

  /** Lets every process run on as if never stopped. Safe at any time, and more than once. */
  release(): void {
    if (this.ended) return;
    this.ended = 'released';
    unhold(this);
    for (const a of this.attached.splice(0)) {
      try { a.release(); } catch { /* best effort: the processes matter more */ }
    }
    let first: unknown = null;
    // Children first: a parent must not find a child of its stopped.
    for (const fp of [...this.procs].reverse()) {
      try { fp.release(); } catch (err) { first ??= err; }
    }
    if (first) throw first;
  }

  /** Ends every process of the set. */
  kill(): void {
    if (this.ended) return;
    this.ended = 'killed';
    unhold(this);
    // SIGKILL to all before reaping any: whatever happens next, none runs on.
    for (const fp of this.procs) {
      try { kill(fp.pid, SIGKILL); } catch { /* gone */ }
    }
    // What is attached goes before the pids are freed: a restore on this
    // host waits for the pids, and a connection still held (the guardian's
    // copy of a socket in repair mode) would keep its address from it.
    for (const a of this.attached.splice(0)) {
      try { a.forget(); } catch { /* closed */ }
      if (a.settle) this.handedOn.push(a);
    }
    for (const fp of [...this.procs].reverse()) {
      try { fp.kill(); } catch { /* reaped already */ }
    }
  }

  /**
   * A killed set's image was taken over and its new owner is done (a
   * migration's receiver restored it, or failed): what the kill handed on
   * with it (the TCP connections' locks) is lifted.
   */
  settle(): void {
    for (const a of this.handedOn.splice(0)) {
      try { a.settle!(); } catch { /* best effort */ }
    }
  }
}

/**
 * Runs a Pager wherever it lives (a worker thread of tsnap restore, then a
 * background pager process after --detach) from a plain description of its
 * sources and contexts, which is also what a handover passes on. It tells
 * the guard (tsnap-lazyguard.c) how the fill ended: "D" all in, "K" give up
 * (the guard kills the processes, whose faults nobody would answer).
 */
import { writeSync } from 'node:fs';
import { Pager, PagerFailure, type PagerContext, type PagerStats } from './pager.js';
import { Pending } from './pending.js';
import { ChainPageSource, type ChainLevelSpec, type PageSource } from './page-source.js';
import type { Range } from '../image/ranges.js';

export interface SourceSpec {
  levels: ChainLevelSpec[];
  within: Range[];
}

export interface ContextSpec {
  fd: number;
  name: string;
  source: number;
  /** Absent for a new context: everything the source holds... */
  pending?: [number, number, number][];
  /** ...but these addresses (written at restore already). */
  skip?: readonly Range[];
}

export interface HostState {
  sources: SourceSpec[];
  contexts: ContextSpec[];
}

export type HostEnd = { how: 'done' | 'stopped'; stats: PagerStats } | { how: 'failed'; message: string; stats: PagerStats };

export class PagerHost {
  readonly pager: Pager;
  private readonly sources: { spec: SourceSpec; source: PageSource }[] = [];

  constructor(private readonly guardFd: number, private readonly log: (m: string) => void, fillDelayMs = 0, onFaultWait?: (waiting: boolean) => void) {
    this.pager = new Pager({ log, fillDelayMs, onFaultWait });
  }

  addSource(spec: SourceSpec): number {
    this.sources.push({ spec, source: new ChainPageSource(spec.levels, spec.within) });
    return this.sources.length - 1;
  }

  /**
   * A source that is no image chain (post-copy: the migration's source
   * host). It cannot be handed over to a background pager.
   */
  addRemoteSource(source: PageSource, within: Range[]): number {
    this.sources.push({ spec: { levels: [], within }, source });
    return this.sources.length - 1;
  }

  addContext(spec: ContextSpec): void {
    const s = this.sources[spec.source].source;
    const pending = spec.pending ? Pending.fromJSON(spec.pending) : new Pending(splitAt(s.extents(), this.sources[spec.source].spec.within));
    for (const r of spec.skip ?? []) pending.cut(r.start, r.end);
    this.pager.add({ fd: spec.fd, name: spec.name, pending, source: s });
  }

  /** Data of a source, for the restore's own use (repairs). */
  fetch(source: number, start: number, len: number): Promise<Buffer | null> {
    return this.sources[source].source.fetch(start, len);
  }

  static fromState(state: HostState, guardFd: number, log: (m: string) => void, fillDelayMs = 0): PagerHost {
    const host = new PagerHost(guardFd, log, fillDelayMs);
    for (const s of state.sources) host.addSource(s);
    for (const c of state.contexts) host.addContext(c);
    return host;
  }

  /** What a stopped pager hands over (fds are this process's). */
  exportState(): HostState {
    const index = (src: PageSource) => this.sources.findIndex((s) => s.source === src);
    return {
      sources: this.sources.map((s) => s.spec),
      contexts: this.pager.contexts.map((c: PagerContext) => ({ fd: c.fd, name: c.name, source: index(c.source), pending: c.pending.toJSON() })),
    };
  }

  async run(): Promise<HostEnd> {
    try {
      const how = await this.pager.run();
      if (how === 'done') this.tellGuard('D');
      return { how, stats: this.pager.stats };
    } catch (err) {
      const message = err instanceof PagerFailure ? err.message : `internal error: ${(err as Error)?.stack ?? err}`;
      this.log(`tsnap lazy pager: ${message}; the restored processes cannot go on`);
      this.tellGuard('K');
      return { how: 'failed', message, stats: this.pager.stats };
    } finally {
      if (this.pager.contexts.length === 0) for (const s of this.sources) s.source.close();
    }
  }

  /** The pager cannot run at all: the guard is told to give up, as when it fails. */
  fail(message: string): HostEnd {
    this.log(`tsnap lazy pager: ${message}; the restored processes cannot go on`);
    this.tellGuard('K');
    return { how: 'failed', message, stats: this.pager.stats };
  }

  private tellGuard(c: 'D' | 'K'): void {
    if (this.guardFd < 0) return;
    try { writeSync(this.guardFd, c); } catch { /* the guard is gone: nothing to tell */ }
  }
}

/** Pieces of the extents cut at every boundary of `within` (the VMAs): one fill never crosses a VMA. */
function splitAt(extents: { start: number; len: number }[], within: Range[]): { dest: number; src: number; len: number }[] {
  const cuts = [...new Set(within.flatMap((r) => [r.start, r.end]))].sort((a, b) => a - b);
  const out: { dest: number; src: number; len: number }[] = [];
  let c = 0;
  for (const e of extents) {
    let s = e.start;
    const end = e.start + e.len;
    while (c < cuts.length && cuts[c] <= s) c++;
    for (let k = c; k < cuts.length && cuts[k] < end; k++) {
      out.push({ dest: s, src: s, len: cuts[k] - s });
      s = cuts[k];
    }
    out.push({ dest: s, src: s, len: end - s });
  }
  return out;
}

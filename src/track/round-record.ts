/**
 * One round's use of a tracking's record (state.ts): found and checked
 * before anything is cleared, updated around the scan and at the commit.
 */
import { TsnapError } from '../errors.js';
import { union, type Range } from '../image/ranges.js';
import { newState, readState, writeState, settle, type ImageRef, type TrackingState } from './state.js';
import type { Tracking } from './tracking.js';

export class RoundRecord {
  private constructor(
    private readonly state: TrackingState,
    private readonly image: ImageRef,
    /** Why this round cannot be a delta although the tracking is alive, or null. */
    readonly distrust: string | null,
  ) {}

  /** Pages earlier rounds cleared that no committed image holds: this round copies them too. */
  get pending(): Range[] {
    return this.state.pending;
  }

  /**
   * The record of `t` for a round writing `image` with `parent` (null: no
   * --parent). Refuses a parent that is not the image whose round last
   * cleared the written bits: a delta against it would miss what was
   * written before that later round.
   */
  static open(t: Tracking, parent: { dir: string; imageId: string } | null, parentArg: string | null, image: ImageRef): RoundRecord {
    if (t.fresh) return new RoundRecord(newState(t.ref), image, null);
    const found = readState(t.ref);
    if (!found) return new RoundRecord(newState(t.ref), image, 'there is no record of which image last took its written pages');
    const distrust = settle(found);
    if (!distrust && parent) {
      const last = found.cleared;
      if (!last) return new RoundRecord(found, image, 'no image of it was ever committed');
      if (last.imageId !== parent.imageId) {
        throw new TsnapError('usage', `--parent ${parentArg ?? parent.dir} is not the newest image of the tracking of process ${t.ref.targetPid}: ${last.dir} took the pages written since, so a delta against ${parentArg ?? parent.dir} would miss writes; use --parent ${last.dir} (if it is gone: tsnap untrack --pid ${t.ref.targetPid}, then start a new chain)`);
      }
    }
    return new RoundRecord(found, image, distrust);
  }

  /** Before the scan: a round that dies from here on is known to have cleared pages. */
  beforeScan(): void {
    this.state.round = { ...this.image, scanned: false };
    writeState(this.state);
  }

  /** After the scan, before copying: what it cleared stays owed until an image holding it commits. */
  afterScan(cleared: Range[]): void {
    this.state.pending = union(this.state.pending, cleared);
    this.state.round = { ...this.image, scanned: true };
    writeState(this.state);
  }

  /** The image is committed: it is the level the next delta must be taken against. */
  committed(): void {
    this.state.cleared = this.image;
    this.state.pending = [];
    this.state.round = null;
    writeState(this.state);
  }
}

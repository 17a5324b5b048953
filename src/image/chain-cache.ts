/**
 * A chain read once by a caller that extends it round by round (migrate:
 * every round names the one before as its parent). Each round read the
 * whole chain again (every level's pagemap decoded) and folded every
 * level's runs into the stored ranges again: at 4 GiB and 100 MB/s, with
 * rounds of 400 000 to 12 000 pages, that was ~0.9 s of the final round's
 * preparation, while the writer dirtied what the frozen window then had to
 * copy. Here each level is read once (kept by directory, checked against
 * the image id its child names: a committed image never changes), and the
 * fold of a chain is kept by the id of its newest image, so that a round
 * folds only the level added since.
 */
import type { Image } from './image-reader.js';
import { foldLevel } from './chain-index.js';
import { runTableOf } from './run-table.js';
import type { Range } from './ranges.js';

export class ChainCache {
  /** Images by their resolved directory (readChain's `cache`). */
  readonly images = new Map<string, Image>();
  /** The stored ranges of the chain ending at an image, by its id (the newest two). */
  private stored = new Map<string, Range[]>();

  /** chainStoredRanges() of `chain` (newest first), folding only what no earlier call did. */
  storedRanges(chain: readonly Image[]): Range[] {
    let from = chain.findIndex((l) => l.inventory.kind === 'full');
    if (from < 0) from = chain.length - 1;
    let k = 0;
    while (k <= from && !this.stored.has(chain[k].inventory.imageId)) k++;
    let stored: Range[] = k <= from ? this.stored.get(chain[k].inventory.imageId)! : [];
    for (let level = (k <= from ? k : from + 1) - 1; level >= 0; level--) stored = foldLevel(stored, runTableOf(chain[level].pagemap));
    const newest = chain[0].inventory.imageId;
    // The next round's parent is this image: older folds are not asked for again.
    const keep = new Map<string, Range[]>([[newest, stored]]);
    this.stored = keep;
    return stored;
  }
}

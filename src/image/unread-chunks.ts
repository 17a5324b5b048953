/**
 * `verify` checks every chunk of a chain; a restore reads (and checks) only
 * the chunks that hold pages it writes, as it writes them. The others —
 * pages a newer level replaced, memory no longer mapped — are checked here,
 * before a restore creates anything, so that a restore refuses every image
 * that verify refuses.
 */
import { resolveChain } from './chain-index.js';
import { PageFileReader } from './page-file.js';
import type { Image } from './image-reader.js';
import type { Range } from '../dump/ranges.js';

export function checkUnreadChunks(chain: readonly Image[], within: Range[]): void {
  const read = new Set(resolveChain(chain.map((c) => ({ kind: c.inventory.kind, runs: c.pagemap.runs })), within).map((r) => `${r.image}:${r.chunk}`));
  chain.forEach((img, level) => {
    let reader: PageFileReader | null = null;
    try {
      for (let i = 0; i < img.pagemap.chunks.length; i++) {
        if (!read.has(`${level}:${i}`)) (reader ??= new PageFileReader(img.dir, img.pagemap.chunks)).readChunk(i);
      }
    } finally {
      reader?.close();
    }
  });
}

/**
 * `verify` checks every chunk of a chain; a restore reads (and checks) only
 * the chunks that hold pages it writes, as it writes them. The others —
 * pages a newer level replaced, memory no longer mapped — are checked here,
 * before a restore creates anything, so that a restore refuses every image
 * that verify refuses. As stored only (CRC, length prefix): they are never
 * decoded, and decoding them would cost a chain restore (a migration's
 * downtime) time for nothing.
 */
import { resolveTables, type ResolvedTable } from './chain-index.js';
import { runTableOf } from './run-table.js';
import { PageFileReader } from './page-file.js';
import type { Image } from './image-reader.js';
import type { Range } from './ranges.js';

/** Returns the chain resolved over `within`, which the restore's page writer then uses as it is. */
export function checkUnreadChunks(chain: readonly Image[], within: Range[]): ResolvedTable {
  // A flag per chunk of each level, set by the resolver as it goes: no set of keys, no second pass
  // over the runs (157 000 for a 1 GiB chain, in cold code).
  const read = chain.map((c) => new Uint8Array(c.pagemap.chunks.length));
  const resolved = resolveTables(chain.map((c) => ({ kind: c.inventory.kind, table: runTableOf(c.pagemap) })), within, read);
  chain.forEach((img, level) => {
    let reader: PageFileReader | null = null;
    let buf: Buffer | undefined;
    try {
      for (let i = 0; i < img.pagemap.chunks.length; i++) {
        if (read[level][i]) continue;
        reader ??= new PageFileReader(img.dir, img.pagemap.chunks);
        buf ??= Buffer.allocUnsafeSlow(img.inventory.chunkSize + (img.inventory.chunkSize >> 7) + 64);
        reader.checkChunk(i, buf);
      }
    } finally {
      reader?.close();
    }
  });
  return resolved;
}

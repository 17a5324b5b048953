/**
 * `verify` checks every chunk of a chain; a restore reads (and checks) only
 * the chunks that hold pages it writes, as it writes them. The others —
 * pages a newer level replaced, memory no longer mapped — are checked here,
 * before a restore creates anything, so that a restore refuses every image
 * that verify refuses. As stored only (CRC, length prefix): they are never
 * decoded, and decoding them would cost a chain restore (a migration's
 * downtime) time for nothing.
 */
import { resolveChain, type ResolvedRun } from './chain-index.js';
import { PageFileReader } from './page-file.js';
import type { Image } from './image-reader.js';
import type { Range } from './ranges.js';

/** Returns the chain resolved over `within`, which the restore's page writer then uses as it is. */
export function checkUnreadChunks(chain: readonly Image[], within: Range[]): ResolvedRun[] {
  const resolved = resolveChain(chain.map((c) => ({ kind: c.inventory.kind, runs: c.pagemap.runs })), within);
  const read = new Set(resolved.map((r) => r.image * 0x100000000 + r.chunk));
  chain.forEach((img, level) => {
    let reader: PageFileReader | null = null;
    let buf: Buffer | undefined;
    try {
      for (let i = 0; i < img.pagemap.chunks.length; i++) {
        if (read.has(level * 0x100000000 + i)) continue;
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

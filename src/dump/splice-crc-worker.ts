/**
 * The thread of SpliceCrc (splice-crc.ts): reads chunks the one-copy dump
 * just stored back from the page cache and computes their CRCs, while the
 * main thread splices the next ones. Its own event loop: no step of it
 * waits for the main thread, which is busy splicing.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { openSync, readSync, closeSync } from 'node:fs';
import { crc32 } from '../image/checksum.js';

/** A piece read stays in the CPU's cache until its CRC is taken. */
const PIECE = 256 << 10;

const fd = openSync((workerData as { path: string }).path, 'r');
const buf = Buffer.allocUnsafeSlow(PIECE);

parentPort!.on('message', (m: { id: number; position: number; len: number } | 'end') => {
  if (m === 'end') { closeSync(fd); parentPort!.close(); return; }
  try {
    let crc = 0;
    for (let done = 0; done < m.len;) {
      const n = readSync(fd, buf, 0, Math.min(PIECE, m.len - done), m.position + done);
      if (n <= 0) throw Object.assign(new Error('short read of a chunk just stored'), { code: 'EIO' });
      crc = crc32(buf.subarray(0, n), crc);
      done += n;
    }
    parentPort!.postMessage({ id: m.id, crc });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    parentPort!.postMessage({ id: m.id, error: String(e?.message ?? err).split('\n')[0], code: e?.code });
  }
});

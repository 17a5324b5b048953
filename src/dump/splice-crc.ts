/**
 * CRCs of the one-copy dump's chunks, on a thread of their own
 * (splice-crc-worker.ts), opt-in (TSNAP_SPLICE_CRC_THREAD=1): a chunk's CRC
 * needs its bytes in tsnap, which the splice never brings, so each chunk is
 * read back from the page cache once it is stored. On another core that
 * shortens the freeze by the CRCs' share of it (14% at 1 GiB, load 7.5),
 * for ~10 MiB of RSS (a V8 isolate). Through libuv's pool instead, each
 * step waited for the busy main thread to dispatch it and the CRCs trailed
 * the copy by 0.7 s (docs/performance.md).
 */
import { Worker } from 'node:worker_threads';

interface Waiting { resolve: (crc: number) => void; reject: (err: unknown) => void }

export class SpliceCrc {
  private readonly waiting = new Map<number, Waiting>();
  private nextId = 0;
  private failure: unknown = null;
  private ended = false;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (m: { id: number; crc?: number; error?: string; code?: string }) => {
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (m.error !== undefined) w.reject(Object.assign(new Error(m.error), { code: m.code ?? 'EIO' }));
      else w.resolve(m.crc! >>> 0);
    });
    const lost = (err: unknown) => {
      this.failure ??= err;
      for (const w of this.waiting.values()) w.reject(err);
      this.waiting.clear();
    };
    worker.on('error', lost);
    worker.on('exit', () => { if (!this.ended) lost(new Error('the CRC thread exited')); });
  }

  /** A thread reading the pages file `path` (it must exist). */
  static start(path: string): SpliceCrc {
    return new SpliceCrc(new Worker(new URL('./splice-crc-worker.js', import.meta.url), { workerData: { path }, execArgv: [] }));
  }

  /** The CRC-32 of `len` bytes at `position` of the file, as stored now. */
  crc(position: number, len: number): Promise<number> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ id, position, len });
    });
  }

  /** Ends the thread after it has answered every CRC asked for (they come first: messages keep their order). */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.worker.postMessage('end');
  }

  /** Ends the thread now; CRCs not yet answered fail. */
  abort(): void {
    if (this.ended && this.waiting.size === 0) return;
    this.ended = true;
    const err = new Error('aborted');
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
    void this.worker.terminate();
  }
}

/**
 * VmFlags read on a thread of their own. Producing smaps walks every page
 * table of the target (tens of ms per GiB resident), and it must be read
 * frozen: a madvise() or mlock() changes a VMA's flags in place, with
 * nothing in /proc/PID/maps to tell. So the read is not moved out of the
 * freeze but beside the other frozen work: the thread is started before
 * the freeze, asked once frozen, and answers while the main thread runs the
 * remote syscalls of the state collection.
 */
import { Worker } from 'node:worker_threads';

type Answer = { flags: Map<number, string[]> } | { error: string };

export class SmapsReader {
  private constructor(private readonly worker: Worker) {}

  /** Started before the freeze: a worker's start-up (~20-30 ms) must not count as frozen time. */
  static async start(): Promise<SmapsReader> {
    const worker = new Worker(new URL('./smaps-worker.js', import.meta.url));
    await new Promise<void>((resolve, reject) => {
      worker.once('message', () => resolve());
      worker.once('error', reject);
    });
    worker.unref();
    return new SmapsReader(worker);
  }

  /**
   * Starts the read (the target must be frozen already); the promise gives
   * its VmFlags, or undefined when the worker could not read them: the
   * caller then reads them itself, and reports that error. Never rejects.
   */
  read(pid: number): Promise<Map<number, string[]> | undefined> {
    const answer = new Promise<Answer>((resolve) => {
      this.worker.once('message', resolve);
      this.worker.once('error', (err) => resolve({ error: String(err) }));
    });
    this.worker.postMessage({ pid });
    return answer.then((a) => ('flags' in a ? a.flags : undefined));
  }

  async stop(): Promise<void> {
    await this.worker.terminate();
  }
}

/**
 * The final round's handshake before the freeze (wire v2 READY).
 *
 * The receiver does work of its own when the final round begins: it reads
 * the live process's VmFlags for the self-check (live-vmflags.ts), a
 * page-table walk of the whole process (0.1-0.6 s for 256 MiB on a loaded
 * host). It used to start on ITER_BEGIN while the sender went on to
 * freeze: whenever the walk outlasted the sender's own preparation, the
 * frozen window waited for it (0.44 s once), the receiver reading none of
 * the final round meanwhile. The sender now asks for READY in the final
 * ITER_BEGIN and freezes only once it came; both sides' preparations still
 * run side by side.
 */
import { FrameReader, Msg } from './wire.js';
import { TsnapError } from '../errors.js';

/** Longer than any page-table walk: a receiver this slow is stuck. */
export const READY_LIMIT_MS = 30_000;

/**
 * Waits for READY; polls `checkAbort` meanwhile so that a signal ends the
 * wait (the source is not frozen yet: it runs on).
 */
export async function receiverReady(reader: FrameReader, checkAbort: () => void, limitMs = READY_LIMIT_MS): Promise<void> {
  const ready = reader.expect(Msg.Ready, 'waiting for the receiver to be ready for the final round');
  let timer: NodeJS.Timeout | null = null;
  const started = Date.now();
  const polled = new Promise<never>((_, reject) => {
    const tick = () => {
      try {
        checkAbort();
        if (Date.now() - started > limitMs) throw new TsnapError('targetFailed', `the receiver did not get ready for the final round within ${limitMs / 1000} s (a stuck tsnap serve?)`);
      } catch (err) {
        reject(err);
        return;
      }
      timer = setTimeout(tick, 20);
    };
    timer = setTimeout(tick, 20);
  });
  polled.catch(() => {});
  try {
    await Promise.race([ready, polled]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}

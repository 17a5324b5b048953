/**
 * Polls `probe` until `accept` holds for what it returns, and returns that
 * value; fails after `timeoutMs` with the last value seen. For "it moved
 * on" checks: waiting exactly as long as needed, never a fixed sleep that is
 * too short on a loaded machine or wasted on an idle one.
 */
export async function eventually<T>(probe: () => T | Promise<T>, accept: (v: T) => boolean, timeoutMs = 5000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T = await probe();
  while (!accept(last)) {
    if (Date.now() > deadline) throw new Error(`${what} not met within ${timeoutMs} ms; last seen: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 10));
    last = await probe();
  }
  return last;
}

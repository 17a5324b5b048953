/**
 * serve's warm-up (migrate/warm-up.ts), the lazy half: a post-copy
 * receiver finishes its process with a lazy restore, whose own code (the
 * uffd's creation and registration, the guard, the pager) an eager restore
 * does not run; cold, it added tens of ms to the first post-copy's
 * downtime. So the warm-up image is restored lazily once more, filled and
 * killed; then a guard is kept started ahead for the lazy restores to come
 * (guard-spawn.ts).
 */
import { restore } from '../restore/restore.js';
import { keepSpareGuard } from './guard-spawn.js';

/** Restores `img` lazily under a new pid (pushed to `pids` for the caller to kill) and waits for its fill. */
export async function warmUpLazy(img: string, pids: number[]): Promise<void> {
  let r;
  try {
    r = await restore({ dir: img, newPid: true, stdout: '/dev/null', stderr: '/dev/null', lazy: { detach: false } });
  } catch (err) {
    throw new Error(`restoring it lazily (as post-copy does): ${(err as Error).message}`);
  }
  pids.push(r.pid);
  const said = await r.lazy!.finish();
  if (r.lazy!.end?.how === 'failed') throw new Error(`restoring it lazily (as post-copy does): ${said}`);
  keepSpareGuard();
}

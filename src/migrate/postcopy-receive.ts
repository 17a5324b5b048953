/**
 * `tsnap serve`, post-copy: after the commit the process built while the
 * rounds arrived is finished by restore() with its post-copy set lazy
 * (src/lazy, the pages from the source over this connection), started at
 * once, and RESTORED is sent; once the pager has every page in, the
 * receiver says POSTCOPY_DONE and the source is killed.
 *
 * The chain on disk does not hold the post-copy set's newest pages: its
 * final image is removed (the rounds before stay), so that nobody restores
 * stale memory from it, and the restore is never retried from the disk.
 *
 * The connection lost before every page is in: the pager fails, its guard
 * kills the process (it cannot go on without those pages), and the event
 * says what is lost.
 */
import type { Socket } from 'node:net';
import { rmSync } from 'node:fs';
import { FrameReader, Msg, encodeDoc, send } from './wire.js';
import { RemotePageSource } from './postcopy-pages.js';
import { restore, waitForExit, type RestoreResult } from '../restore/restore.js';
import type { LiveBuild } from './live-build.js';
import type { Range } from '../image/ranges.js';

export interface PostcopyReceiveOptions {
  stdout?: string;
  stderr?: string;
  newPid?: boolean;
  onEvent?: (e: Record<string, unknown>) => void;
}

export async function receivePostcopy(sock: Socket, reader: FrameReader, live: LiveBuild, last: string, set: readonly Range[], hooks: { image: () => void; chainDone: () => Promise<void>; committedAt: bigint; windowOver?: () => void }, opts: PostcopyReceiveOptions): Promise<void> {
  const { chainDone } = hooks;
  const source = new RemotePageSource(sock, set);
  const pumping = source.pump(reader);
  const t0 = Date.now();
  let r: RestoreResult;
  try {
    hooks.image(); // the final image, read and checked
    r = await restore({ dir: last, stdout: opts.stdout, stderr: opts.stderr, newPid: opts.newPid, lazy: { detach: false, remote: { source, set: [...set] } } }, live);
  } catch (err) {
    hooks.windowOver?.();
    live.kill();
    source.close();
    // Nothing ran here: the source may resume (its sender does so on RESTORE_FAILED).
    const message = `restore failed: ${(err as Error).message}; post-copy: the source keeps the process`;
    await send(sock, encodeDoc(Msg.RestoreFailed, { message, dir: last })).catch(() => {});
    opts.onEvent?.({ event: 'restore-failed', message, dir: last });
    await chainDone().catch(() => {});
    dropStaleFinal(last, opts);
    sock.end();
    return;
  }
  void waitForExit(r.pid);
  for (const message of r.warnings) opts.onEvent?.({ event: 'warning', pid: r.pid, message });
  const sinceCommitUs = Number(process.hrtime.bigint() - hooks.committedAt) / 1000;
  // Our event first: a watcher that hears the sender say "resumed" finds it already told.
  opts.onEvent?.({ event: 'restored', pid: r.pid, dir: last, restoreUs: r.stats.restoreUs, path: 'live', postcopyPages: source.setPages, ...(r.warnings.length ? { warnings: r.warnings } : {}) });
  await send(sock, encodeDoc(Msg.Restored, { pid: r.pid, restoreUs: r.stats.restoreUs, path: 'live', sinceCommitUs })).catch(() => {});
  // The downtime is over: the page service runs in the normal class.
  hooks.windowOver?.();
  const said = await r.lazy!.finish();
  // Only now: closing the counters occupies a pool thread for RCU grace periods (proc/vmflags-watch.ts).
  live.earlyVmFlags?.close();
  const end = r.lazy!.end;
  if (end?.how === 'failed') {
    const missing = source.setPages - source.pagesIn;
    const message = `post-copy failed after the resume (${end.message}): ${missing} of the ${source.setPages} pages the process wrote in its last round were only on the source; process ${r.pid} was killed here and is lost`;
    opts.onEvent?.({ event: 'postcopy-failed', pid: r.pid, message, pagesMissing: missing });
  } else {
    await send(sock, encodeDoc(Msg.PostcopyDone, { pages: source.setPages })).catch(() => {});
    opts.onEvent?.({ event: 'postcopy-done', pid: r.pid, pages: source.setPages, requests: source.requests, ms: Date.now() - t0, fill: said });
  }
  source.close();
  sock.end();
  await pumping;
  await chainDone().catch(() => {});
  dropStaleFinal(last, opts);
}

function dropStaleFinal(last: string, opts: PostcopyReceiveOptions): void {
  rmSync(last, { recursive: true, force: true });
  opts.onEvent?.({ event: 'chain-partial', dir: last, message: `post-copy: the final image is not kept (it lacks the pages served after the resume); the rounds before it stay` });
}

/**
 * The source's half of post-copy: once the receiver committed, the frozen
 * source serves the pages its final round left out. Pages the receiver's
 * process faulted on (PAGE_REQUEST) go first; in between, everything else
 * is pushed in address order, so that the background fill needs no round
 * trips. Every page is sent once: a request for pages already on their way
 * is answered by the data in flight (the stream is ordered).
 *
 * The memory is read with process_vm_readv from the frozen process (and
 * through /proc/PID/mem where that is refused: PROT_NONE memory).
 */
import type { Socket } from 'node:net';
import { FrameReader, Msg, decodeDoc, encodeFrame, send } from './wire.js';
import { RangeQueue, encodePageDataHeader, PAGE_DATA_MAX, PAGE_DATA_HEADER } from './postcopy-wire.js';
import { VmCopier, ProcMem } from '../sys/index.js';
import { TsnapError } from '../errors.js';
import type { Range } from '../image/ranges.js';
import { PAGE_SIZE } from '../sys/uapi.js';
import { mark } from '../trace.js';

const P = PAGE_SIZE;

export interface PageServeOptions {
  /** Bytes per second; 0 = unlimited. */
  bandwidthLimit?: number;
  /** The receiver's RESTORED or RESTORE_FAILED, as it arrives (the pages are served meanwhile). */
  onReply?: (f: { type: Msg; doc: Record<string, unknown> }) => void;
}

export interface PageServeResult {
  pagesPushed: number;
  pagesRequested: number;
  requests: number;
  /** The receiver's restore failed before its process ran: nothing was served to a running process. */
  restoreFailed: string | null;
  /** Every page left the source (the receiver may still not have them all). */
  allSent: boolean;
}

/** Frames per batch between two looks at the requests. */
const BATCH_FRAMES = 16;

/** Tests: a pause after each pushed batch (requests are still answered at once), to cut a connection mid-push. */
const pushDelayMs = (): number => Number(process.env.TSNAP_POSTCOPY_PUSH_DELAY_MS ?? 0) || 0;

/** Serves `set` of the frozen `pid` until the receiver says POSTCOPY_DONE (or its restore failed). */
export async function servePages(sock: Socket, reader: FrameReader, pid: number, set: readonly Range[], opts: PageServeOptions = {}, res: PageServeResult = newServeResult()): Promise<PageServeResult> {
  const queue = new RangeQueue(set);
  const requests: Range[] = [];
  let failure: unknown = null;
  let finished = false;
  let wake = null as (() => void) | null;
  const reading = (async () => {
    for (;;) {
      const f = await reader.next();
      if (!f) throw new TsnapError('targetFailed', 'the receiver closed the connection');
      if (f.type === Msg.PageRequest) {
        const doc = decodeDoc<{ ranges: [number, number][] }>(f);
        res.requests++;
        mark(`postcopy: asked 0x${doc.ranges[0]?.[0].toString(16)} (${doc.ranges.length} ranges)`);
        for (const [start, len] of doc.ranges) requests.push({ start, end: start + len });
        wake?.();
      } else if (f.type === Msg.Restored) {
        opts.onReply?.({ type: f.type, doc: decodeDoc(f) });
      } else if (f.type === Msg.RestoreFailed) {
        const doc = decodeDoc<{ message: string }>(f);
        res.restoreFailed = doc.message;
        opts.onReply?.({ type: f.type, doc: doc as unknown as Record<string, unknown> });
        return;
      } else if (f.type === Msg.PostcopyDone) {
        decodeDoc(f);
        return;
      } else if (f.type === Msg.Error) {
        const e = decodeDoc<{ message: string }>(f);
        throw new TsnapError('targetFailed', `the receiver gave up: ${e.message}`);
      } else {
        throw new TsnapError('badImage', `migration stream: unexpected ${Msg[f.type] ?? f.type} message while serving post-copy pages`);
      }
    }
  })().then(() => { finished = true; wake?.(); }, (err) => { failure = err; wake?.(); });

  const copier = new VmCopier(pid);
  let mem: ProcMem | null = null;
  const t0 = Date.now();
  let sent = 0;
  try {
    while (!queue.empty && !failure && !finished) {
      // One batch of up to PAGE_DATA_MAX bytes or BATCH_FRAMES frames,
      // requested pages first, then one yield: a write that fits the socket
      // buffer never lets the requests in otherwise. A set of scattered
      // pages is one frame per page: 256 of them in a batch held a request
      // back for 5-10 ms.
      let batch = 0;
      let frames = 0;
      let pushed = false;
      while (batch < PAGE_DATA_MAX && frames++ < BATCH_FRAMES && !queue.empty) {
        let piece: Range | null = null;
        let asked = false;
        while (!piece && requests.length) {
          piece = queue.takeWithin(requests[0], PAGE_DATA_MAX - batch);
          if (piece) asked = true;
          else requests.shift();
        }
        piece ??= queue.takeFirst(PAGE_DATA_MAX - batch)!;
        const len = piece.end - piece.start;
        // Read straight behind the header: the frame goes out without a copy.
        const payload = Buffer.allocUnsafe(PAGE_DATA_HEADER + len);
        encodePageDataHeader(piece.start, len).copy(payload, 0);
        const got = Math.max(0, copier.readv(payload, PAGE_DATA_HEADER, [{ addr: piece.start, len }]));
        if (got < len) (mem ??= new ProcMem(pid)).read(payload, PAGE_DATA_HEADER + got, len - got, piece.start + got);
        await send(sock, encodeFrame(Msg.PageData, payload));
        if (asked) mark(`postcopy: answered 0x${piece.start.toString(16)}+${len >> 12}p`);
        if (asked) res.pagesRequested += len / P;
        else { res.pagesPushed += len / P; pushed = true; }
        sent += len;
        batch += len;
      }
      if (queue.empty && !res.allSent) { res.allSent = true; mark('postcopy: all sent'); }
      const limit = opts.bandwidthLimit ?? 0;
      const ahead = Math.max(limit > 0 ? sent / limit * 1000 - (Date.now() - t0) : 0, pushed ? pushDelayMs() : 0);
      await new Promise((r) => (ahead > 0 ? setTimeout(r, ahead) : setImmediate(r)));
    }
    if (!failure && !finished) await new Promise<void>((r) => { wake = r; if (failure || finished) r(); });
    await reading;
    if (failure) throw failure;
    return res;
  } finally {
    mem?.close();
  }
}

/** Figures of a page service, updated as it goes (the caller keeps them should it fail). */
export function newServeResult(): PageServeResult {
  return { pagesPushed: 0, pagesRequested: 0, requests: 0, restoreFailed: null, allSent: false };
}

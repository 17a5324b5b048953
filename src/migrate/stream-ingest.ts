/**
 * The receiving side of streamed rounds (wire v2): each round's LAYOUT and
 * PAGE_CHUNK frames go both into the image chain on disk (chunk-file.ts, in
 * the background) and, with `serve --restore`, into the process being built
 * (live-build.ts). The chain is what the commit stands on; the live build
 * is what makes the downtime small. When the live build cannot go on (a
 * layout it cannot build, the pid held, a failed write), it is killed and
 * the migration carries on to disk alone: the process is then restored
 * from the chain after the commit, and the events say why.
 */
import { existsSync } from 'node:fs';
import { mark } from '../trace.js';
import { open } from 'node:fs/promises';
import { withPath } from '../errors.js';
import { resolve } from 'node:path';
import { readImage, checkPagesFile, type Image } from '../image/image-reader.js';
import { LiveBuild, liveObstacle, type LiveLayout } from './live-build.js';
import { ReceivedPagesFile, fsyncDirAsync } from './chunk-file.js';
import { layoutMismatch, type SentLayout } from './layout-check.js';
import { decodeChunk, chunkData } from './page-stream.js';
import { inside } from './confine.js';
import { readComm, readStat } from '../proc/index.js';
import { TsnapError } from '../errors.js';
import type { VmaImage } from '../../formats/schema.js';
import { PAGE_SIZE } from '../sys/uapi.js';

export interface IngestOptions {
  pid: number;
  /** Build the process while it arrives (serve --restore). */
  build: boolean;
  newPid?: boolean;
  stdout?: string;
  stderr?: string;
  onEvent?: (e: Record<string, unknown>) => void;
}

export interface LayoutDoc {
  vmas: VmaImage[];
  zero: [number, number][];
  incremental: boolean;
}

/** Who holds a pid, for a message: its name and whether it is a zombie. */
export function holderOf(pid: number): string {
  let name = 'a process';
  let state = '';
  try { name = `"${readComm(pid)}"`; } catch { /* gone meanwhile */ }
  try { state = readStat(pid).state; } catch { /* gone meanwhile */ }
  return `${name} (${state === 'Z' ? 'a zombie its parent has not reaped yet' : state ? 'running' : 'gone meanwhile'})`;
}

export class StreamIngest {
  live: LiveBuild | null = null;
  /** Why the process is not (or no longer) being built live; null while it is, or when it was never wanted. */
  notLive: string | null = null;
  private tried = false;
  private pagesFile: ReceivedPagesFile | null = null;
  /** The LAYOUT of the iteration being received: checked against its image at ITER_END. */
  private sentLayout: SentLayout | null = null;
  /** Streamed iterations' metadata as read and checked at ITER_END (their pages file may not be on disk yet). */
  private readonly indexed = new Map<string, Image>();
  private finishing: Promise<void>[] = [];
  private syncing: Promise<void>[] = [];
  private roundPages = 0;
  /** Streamed iterations read and checked as they completed, by directory: the commit need not read them again. */
  private readonly images = new Map<string, Image>();

  constructor(private readonly opts: IngestOptions) {}

  /** Whether the iteration being received streams its pages. */
  get streaming(): boolean {
    return this.pagesFile !== null;
  }

  async layout(dir: string, doc: LayoutDoc): Promise<void> {
    if (this.pagesFile) throw new TsnapError('badImage', 'migration stream: a second LAYOUT in one iteration');
    const zero = doc.zero.map(([start, end]) => {
      if (start % PAGE_SIZE !== 0 || end % PAGE_SIZE !== 0 || start >= end) throw new TsnapError('badImage', `migration stream: LAYOUT zero range 0x${start.toString(16)}-0x${end.toString(16)} is not a page range`);
      return { start, end };
    });
    this.pagesFile = new ReceivedPagesFile(inside(dir, 'pages'));
    this.sentLayout = { vmas: doc.vmas, zero, incremental: doc.incremental };
    this.roundPages = this.live?.pages ?? 0;
    if (!this.opts.build) return;
    const l: LiveLayout = { vmas: doc.vmas, zero, incremental: doc.incremental };
    if (this.live) { this.guard(() => this.live!.apply(l)); return; }
    if (this.tried) return;
    this.tried = true;
    await this.start(l);
  }

  private async start(l: LiveLayout): Promise<void> {
    const obstacle = liveObstacle(l.vmas);
    if (obstacle) { this.giveUp(`the process cannot be built while it arrives: ${obstacle}`); return; }
    const pid = this.opts.newPid ? null : this.opts.pid;
    if (pid !== null && existsSync(`/proc/${pid}`)) {
      // One host: the source holds its own pid until it is killed after the commit.
      const message = `pid ${pid} is held by ${holderOf(pid)}; the process will be restored from the image chain once the pid is free (a receiver in its own pid namespace, as on another host, or serve --new-pid, builds it while it arrives)`;
      this.opts.onEvent?.({ event: 'pid-held', pid, message });
      this.notLive = message;
      return;
    }
    try {
      this.live = await LiveBuild.create(pid, l, { stdout: this.opts.stdout, stderr: this.opts.stderr });
      this.opts.onEvent?.({ event: 'building', pid: this.live.pid });
    } catch (err) {
      this.giveUp(`the process could not be created: ${(err as Error).message}`);
    }
  }

  /** One PAGE_CHUNK: checked, queued for the disk, written into the process. */
  chunk(payload: Buffer): void {
    if (!this.pagesFile) throw new TsnapError('badImage', 'migration stream: PAGE_CHUNK outside a streamed iteration (no LAYOUT before it)');
    const c = decodeChunk(payload);
    this.pagesFile.append(c);
    if (this.live) this.guard(() => this.live!.write(chunkData(c), c.runs));
    mark(`serve: chunk ${c.index} written (${c.runs.length} runs)`);
  }

  async backpressure(): Promise<void> {
    await this.pagesFile?.backpressure();
  }

  /**
   * ITER_END of a streamed iteration: what arrived is checked against its
   * index at once; its pages file is finished in the background, then it
   * and `files` (the metadata files, written but not yet synced) are made
   * durable.
   */
  endIteration(dir: string, files: readonly string[]): Record<string, unknown> {
    const pf = this.pagesFile;
    if (!pf) return {};
    // Checked now, in memory (the metadata was just written): a mismatch fails the round before anything counts on it.
    const img = readImage(dir, { indexOnly: true });
    pf.check(img.pagemap.chunks, img.pagemap.runs);
    const layoutDiffers = this.sentLayout && layoutMismatch(this.sentLayout, img);
    if (layoutDiffers) throw new TsnapError('badImage', `migration stream: ${dir}: ${layoutDiffers}; the peer is not a compatible tsnap, or the stream is corrupted`);
    this.indexed.set(resolve(dir), img);
    this.pagesFile = null;
    this.sentLayout = null;
    const done = (async () => {
      await pf.complete();
      // The index was read and checked above: what is left is the pages file's header and size.
      checkPagesFile(img);
      this.images.set(resolve(dir), img);
    })();
    const durable = done.then(async () => {
      await pf.sync();
      for (const f of files) {
        const path = inside(dir, f);
        try {
          const fh = await open(path, 'r');
          try { await fh.sync(); } finally { await fh.close(); }
        } catch (err) {
          throw withPath(err, path);
        }
      }
      await fsyncDirAsync(dir);
    }, async (err) => { await pf.abort(); throw err; });
    done.catch(() => {}); // awaited by flush()
    durable.catch(() => {}); // awaited by durable()
    this.finishing.push(done);
    this.syncing.push(durable);
    return this.live ? { livePid: this.live.pid, livePagesWritten: this.live.pages - this.roundPages } : { live: false };
  }

  /** A streamed iteration as read once complete (after flush()), or undefined. */
  image(dir: string): Image | undefined {
    return this.images.get(resolve(dir));
  }

  /** A streamed iteration's metadata as checked at its end (its pages file may still be on its way to the disk), or undefined. */
  indexedImage(dir: string): Image | undefined {
    return this.indexed.get(resolve(dir));
  }

  /** Every streamed round complete on disk and checked (in the page cache; durable() syncs). */
  async flush(): Promise<void> {
    const all = this.finishing;
    this.finishing = [];
    await Promise.all(all);
  }

  /** Every streamed round's files fsynced. */
  async durable(): Promise<void> {
    const all = this.syncing;
    this.syncing = [];
    await Promise.all(all);
  }

  /** The live build stops; the migration goes on to disk. */
  giveUp(reason: string): void {
    this.live?.kill();
    this.live = null;
    this.notLive = reason;
    this.opts.onEvent?.({ event: 'live-abandoned', reason });
  }

  private guard(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.giveUp(`the process being built failed: ${(err as Error).message}`);
    }
  }

  /** The migration failed: no half-built process, no file being written. */
  async abort(): Promise<void> {
    this.live?.kill();
    this.live = null;
    await this.pagesFile?.abort();
    this.pagesFile = null;
    this.sentLayout = null;
    await Promise.allSettled([...this.finishing, ...this.syncing]);
  }
}

/**
 * `tsnap dump`: freeze, record, copy memory, write the image, then kill or
 * resume the target. The order is chosen so that any failure before the end
 * leaves the target exactly as it was: remote syscalls first (their scratch
 * page is gone before the layout is read), then the read-only steps, and the
 * target's fate last, after the image is complete.
 */
import { randomUUID } from 'node:crypto';
import { release as kernelRelease } from 'node:os';
import { join } from 'node:path';
import { ProcMem } from '../sys/index.js';
import { listTasks, readStat } from '../proc/index.js';
import { FrozenTask } from '../freeze/frozen-task.js';
import { hold, unhold, withAbortSignals } from '../freeze/safety-net.js';
import { RemoteSyscaller } from '../inject/remote-syscall.js';
import { collectRemoteState } from './task-state.js';
import { readLayout, assembleProcess } from './process-state.js';
import { dumpPages } from './page-dumper.js';
import { PageFileWriter, DEFAULT_CHUNK_SIZE } from '../image/page-file.js';
import { writeMetaFile } from '../image/metadata.js';
import { encodePagemap } from '../image/page-runs.js';
import { prepareImageDir, discardImageDir, fsyncDir } from '../image/image-dir.js';
import { TsnapError, asTsnapError } from '../errors.js';
import { FileKind, FORMAT_VERSION, type Compression, type DumpStats, type Inventory } from '../../formats/schema.js';
import { TOOL_VERSION } from '../version.js';

export interface DumpOptions {
  pid: number;
  dir: string;
  /** Resume the target after the dump instead of killing it. */
  leaveRunning?: boolean;
  compression?: Compression;
  /** fsync the image before the target is killed (default: when killing). */
  fsync?: boolean;
  chunkSize?: number;
  onProgress?: (p: { bytes: number }) => void;
}

export interface DumpResult {
  dir: string;
  imageId: string;
  stats: DumpStats;
  killed: boolean;
}

export async function dump(opts: DumpOptions): Promise<DumpResult> {
  const t0 = process.hrtime.bigint();
  const { pid } = opts;
  const compression = opts.compression ?? 'none';
  const fsync = opts.fsync ?? !opts.leaveRunning;
  checkTarget(pid);
  const dir = prepareImageDir(opts.dir);
  let task: FrozenTask | null = null;
  let writer: PageFileWriter | null = null;
  try {
    return await withAbortSignals(async (checkAbort) => {
      // Buffers are allocated and touched before the freeze, not during it.
      writer = await PageFileWriter.create(dir.path, compression, opts.chunkSize ?? DEFAULT_CHUNK_SIZE);
      const pageWriter = writer;
      task = FrozenTask.freeze(pid);
      hold(task);
      const frozen = task;
      const mem = new ProcMem(pid);
      try {
        const remote = collectRemoteState(new RemoteSyscaller(frozen, mem), mem);
        const layout = readLayout(pid);
        const processImage = assembleProcess(pid, remote, layout);
        checkAbort();

        const tMem = process.hrtime.bigint();
        let copied = 0;
        const pages = await dumpPages(pid, layout.vmas, layout.classes, pageWriter, mem, (bytes) => {
          copied += bytes;
          opts.onProgress?.({ bytes: copied });
          checkAbort();
        });
        // Every byte is read: a target that stays alive need not wait for the writes.
        let frozenUs = frozen.frozenUs();
        if (opts.leaveRunning) {
          frozen.release();
          unhold(frozen);
        }
        await pageWriter.finish(fsync);
        const memdumpUs = Number(process.hrtime.bigint() - tMem) / 1000;
        checkAbort();

        const imageId = randomUUID();
        const files: Inventory['files'] = {};
        files.pagemap = writeMetaFile(dir.path, FileKind.Pagemap, encodePagemap({ chunks: pageWriter.chunks, runs: pages.runs }), fsync);
        files.process = writeMetaFile(dir.path, FileKind.Process, processImage, fsync);
        const totalUs = Number(process.hrtime.bigint() - t0) / 1000;
        const stats: DumpStats = {
          freezeUs: frozen.freezeUs,
          frozenUs,
          memdumpUs,
          totalUs,
          vmas: layout.vmas.length,
          pagesScanned: pages.pagesScanned,
          pagesWritten: pages.pagesWritten,
          pagesZero: 0,
          pagesSlowPath: pages.pagesSlowPath,
          bytesRaw: pageWriter.bytesRaw,
          bytesStored: pageWriter.bytesStored,
          throughputMiBps: memdumpUs > 0 ? pageWriter.bytesRaw / (1 << 20) / (memdumpUs / 1e6) : 0,
          compression,
        };
        files.stats = writeMetaFile(dir.path, FileKind.Stats, stats, fsync);
        files.pages = { length: pageWriter.bytesStored, crc32: 0 };
        const inventory: Inventory = {
          formatVersion: FORMAT_VERSION,
          imageId,
          createdAt: new Date().toISOString(),
          tool: { name: 'tsnap', version: TOOL_VERSION },
          kind: 'full',
          parent: null,
          pid,
          arch: 'x86_64',
          kernel: kernelRelease(),
          pageSize: 4096,
          chunkSize: pageWriter.chunkSize,
          compression,
          files,
        };
        // The inventory is the commit record: written last, then made durable.
        writeMetaFile(dir.path, FileKind.Inventory, inventory, fsync);
        if (fsync) fsyncDir(dir.path);
        checkAbort();

        // The point of no return: the image is complete.
        if (!opts.leaveRunning) {
          frozenUs = frozen.frozenUs();
          stats.frozenUs = frozenUs;
          frozen.kill();
          unhold(frozen);
        }
        return { dir: dir.path, imageId, stats, killed: !opts.leaveRunning };
      } finally {
        mem.close();
      }
    }, (sig) => new TsnapError('interrupted', `interrupted by ${sig}; the dump was abandoned and process ${pid} resumed unharmed`));
  } catch (err) {
    // Whatever failed, the target runs on as before and no partial image remains.
    const t = task as FrozenTask | null;
    if (t && !t.isReleased) {
      try { t.release(); } catch { /* gone */ }
      unhold(t);
    }
    const w = writer as PageFileWriter | null;
    if (w) await w.abort();
    discardImageDir(dir);
    throw asTsnapError(err, `dump of process ${pid}`);
  }
}

function checkTarget(pid: number): void {
  if (!Number.isInteger(pid) || pid <= 0) throw new TsnapError('usage', `invalid pid ${pid}`);
  try {
    readStat(pid);
  } catch {
    throw new TsnapError('noSuchProcess', `no process with pid ${pid}; check the pid (ps -p ${pid})`);
  }
  if (pid === process.pid) throw new TsnapError('usage', 'tsnap cannot dump itself');
  const tasks = listTasks(pid);
  if (tasks.length > 1) {
    throw new TsnapError('unsupported', `process ${pid} has ${tasks.length} threads; multi-threaded processes are not supported yet (single-threaded only)`);
  }
}

export { join };

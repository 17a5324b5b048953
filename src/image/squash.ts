/**
 * `tsnap squash`: folds a chain into one full image, so that older levels
 * can be deleted. Pages are resolved through the chain and copied chunk by
 * chunk into a new pages file; the state of the newest image is kept.
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { rmSync } from 'node:fs';
import { readChain } from './image-reader.js';
import { isTreeImage, readTreeManifest, imagedMembers } from './tree-manifest.js';
import { resolveChain } from './chain-index.js';
import { PageFileReader, PageFileWriter } from './page-file.js';
import { writeMetaFile } from './metadata.js';
import { encodePagemap } from './page-runs.js';
import { prepareImageDir, discardImageDir, fsyncDir } from './image-dir.js';
import { FileKind, FORMAT_VERSION, PageWhere, type Inventory, type PageRun, type Compression } from '../../formats/schema.js';
import { TsnapError, asTsnapError } from '../errors.js';
import { PAGE_SIZE } from '../sys/uapi.js';

export async function squash(from: string, out: string, compression?: Compression): Promise<{ dir: string; levels: number; pages: number }> {
  if (isTreeImage(from)) return squashTree(from, out, compression);
  return squashChain(from, out, compression);
}

/** A tree: every process's chain squashed into OUT/<pid>, then the manifest. */
async function squashTree(from: string, out: string, compression?: Compression): Promise<{ dir: string; levels: number; pages: number }> {
  const manifest = readTreeManifest(from);
  if (manifest.contents !== 'dump') throw new TsnapError('badImage', `${from} is a tree pre-dump; squash the final image of the chain`);
  const dir = prepareImageDir(out);
  try {
    let levels = 0;
    let pages = 0;
    const ids = new Map<number, string>();
    for (const m of imagedMembers(manifest)) {
      const r = await squashChain(join(from, m.dir), join(dir.path, m.dir), compression);
      levels = Math.max(levels, r.levels);
      pages += r.pages;
      ids.set(m.pid, r.imageId);
    }
    // Each member is a new image now: the manifest records the new ids.
    const processes = manifest.processes.map((m) => (ids.has(m.pid) ? { ...m, imageId: ids.get(m.pid) } : m));
    writeMetaFile(dir.path, FileKind.Tree, { ...manifest, processes, createdAt: new Date().toISOString() }, true);
    fsyncDir(dir.path);
    return { dir: dir.path, levels, pages };
  } catch (err) {
    for (const m of imagedMembers(manifest)) rmSync(join(dir.path, m.dir), { recursive: true, force: true });
    discardImageDir(dir);
    throw err;
  }
}

async function squashChain(from: string, out: string, compression?: Compression): Promise<{ dir: string; levels: number; pages: number; imageId: string }> {
  const chain = readChain(from);
  const top = chain[0];
  if (!top.process) throw new TsnapError('badImage', `${from} is a pre-dump; squash the final image of the chain`);
  const dir = prepareImageDir(out);
  const codec = compression ?? top.inventory.compression;
  let writer: PageFileWriter | null = null;
  const readers = chain.map((c) => new PageFileReader(c.dir, c.pagemap.chunks));
  try {
    const within = top.process.mm.vmas.filter((v) => v.dumped).map((v) => ({ start: v.start, end: v.end }));
    const resolved = resolveChain(chain.map((c) => ({ kind: c.inventory.kind, runs: c.pagemap.runs })), within);
    writer = await PageFileWriter.create(dir.path, codec, top.inventory.chunkSize);
    const runs: PageRun[] = [];
    let buf = await writer.acquire();
    let fill = 0;
    let cached = '';
    let data: Buffer = Buffer.alloc(0);
    let pages = 0;
    for (const r of resolved) {
      for (let i = 0; i < r.pages;) {
        if (fill === writer.chunkSize) {
          writer.submit(buf, fill);
          buf = await writer.acquire();
          fill = 0;
        }
        const key = `${r.image}:${r.chunk}`;
        if (key !== cached) { data = readers[r.image].readChunk(r.chunk); cached = key; }
        const n = Math.min(r.pages - i, (writer.chunkSize - fill) / PAGE_SIZE);
        data.copy(buf, fill, r.offset + i * PAGE_SIZE, r.offset + (i + n) * PAGE_SIZE);
        runs.push({ start: r.start + i * PAGE_SIZE, pages: n, where: PageWhere.Here, chunk: writer.chunks.length, offset: fill });
        fill += n * PAGE_SIZE;
        i += n;
        pages += n;
      }
    }
    if (fill) writer.submit(buf, fill);
    await writer.finish(true);
    const files: Inventory['files'] = {};
    files.pagemap = writeMetaFile(dir.path, FileKind.Pagemap, encodePagemap({ chunks: writer.chunks, runs }), true);
    files.process = writeMetaFile(dir.path, FileKind.Process, top.process, true);
    if (top.stats) files.stats = writeMetaFile(dir.path, FileKind.Stats, top.stats, true);
    files.pages = { length: writer.bytesStored, crc32: 0 };
    // One pages file, whatever the chain's levels had: a format 1 image (a format 2 top would make older readers refuse it).
    const inventory: Inventory = {
      ...top.inventory, formatVersion: FORMAT_VERSION, imageId: randomUUID(), createdAt: new Date().toISOString(), kind: 'full', parent: null,
      compression: codec, files, contents: 'dump', tracking: null,
    };
    writeMetaFile(dir.path, FileKind.Inventory, inventory, true);
    fsyncDir(dir.path);
    return { dir: dir.path, levels: chain.length, pages, imageId: inventory.imageId };
  } catch (err) {
    if (writer) await writer.abort();
    discardImageDir(dir);
    throw asTsnapError(err, `squash of ${from}`);
  } finally {
    for (const r of readers) r.close();
  }
}

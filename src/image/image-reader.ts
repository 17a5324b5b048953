/**
 * Opening an image directory: every metadata file checked and validated,
 * every file bound to the image, the parent chain resolved.
 *
 * Binding: the inventory (the commit record, with the image's random id)
 * records the length and CRC of every other file's payload and the length
 * of the page data, whose chunks the pagemap checks one by one. A file that
 * does not match is from another image or another dump of the same process
 * (or damaged), and the image is refused before anything is used; a parent
 * must carry the id its child recorded.
 */
import { resolve } from 'node:path';
import { readMetaFileEntry } from './metadata.js';
import { runTableOf } from './run-table.js';
import { decodePagemap, validateChunkLayout, type EncodedPagemap } from './page-runs.js';
import { PageFileReader } from './page-file.js';
import { FileKind, FILE_NAMES, PAGES_FILES, FORMAT_VERSION_SPLIT, PageWhere, type Inventory, type ProcessImage, type PagemapImage, type DumpStats } from '../../formats/schema.js';
import { TsnapError } from '../errors.js';

export interface Image {
  dir: string;
  inventory: Inventory;
  /** null for a pre-dump, which holds memory only. */
  process: ProcessImage | null;
  pagemap: PagemapImage;
  stats: DumpStats | null;
}

const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;

/** A metadata file of `dir`, which must be the one its inventory records. */
function readBound<T>(dir: string, inventory: Inventory, kind: FileKind): T {
  const name = FILE_NAMES[kind];
  const want = inventory.files[name];
  if (!want) throw new TsnapError('badImage', `${dir}/inventory does not record a ${name} file; the image is damaged`);
  const got = readMetaFileEntry<T>(dir, kind);
  if (got.length !== want.length || got.crc32 !== want.crc32) {
    throw new TsnapError('badImage', `${dir}/${name} is not the file image ${inventory.imageId} recorded (${got.length} bytes, CRC ${hex(got.crc32)}; recorded ${want.length} bytes, CRC ${hex(want.crc32)}); it was replaced, comes from another image, or is damaged`);
  }
  return got.value;
}

export interface ReadOptions {
  /**
   * Skip the page data: for a dump reading its parent's index only (a
   * migration's staging copy drops the pages once sent). Everything else is
   * checked as always.
   */
  indexOnly?: boolean;
}

export function readImage(dir: string, opts: ReadOptions = {}): Image {
  const inventory = readMetaFileEntry<Inventory>(dir, FileKind.Inventory).value;
  const process = inventory.contents === 'predump' ? null : readBound<ProcessImage>(dir, inventory, FileKind.Process);
  if (process && process.pid !== inventory.pid) {
    throw new TsnapError('badImage', `${dir}/process holds process ${process.pid}, its inventory says ${inventory.pid}; the image was mixed up`);
  }
  const encoded = readBound<EncodedPagemap & { vmas?: PagemapImage['vmas'] }>(dir, inventory, FileKind.Pagemap);
  // Not spread: the decoded pagemap's runs are made from its columns only when asked for (run-table.ts).
  const pagemap = decodePagemap(encoded, `${dir}/pagemap`);
  pagemap.vmas = encoded.vmas ?? process?.mm.vmas;
  // Old images may lack stats; one the inventory records must be intact.
  const stats = inventory.files.stats ? readBound<DumpStats>(dir, inventory, FileKind.Stats) : null;
  const pages = inventory.files.pages;
  if (!pages) throw new TsnapError('badImage', `${dir}/inventory does not record a pages file; the image is damaged`);
  // Format 2 may split the page data over a second file; a format 1 image has one.
  const second = inventory.files[PAGES_FILES[1]];
  if (second && inventory.formatVersion < FORMAT_VERSION_SPLIT) throw new TsnapError('badImage', `${dir}/inventory records ${PAGES_FILES[1]} in a format ${inventory.formatVersion} image; the image is damaged`);
  validateChunkLayout(pagemap.chunks, second ? [pages.length, second.length] : [pages.length], inventory.chunkSize, `${dir}/pagemap`);
  const img = { dir, inventory, process, pagemap, stats };
  if (!opts.indexOnly) checkPagesFile(img);
  if (inventory.kind === 'full' && runTableOf(pagemap).where.includes(PageWhere.Parent)) {
    throw new TsnapError('badImage', `${dir}: a full image refers to pages of a parent; the image is damaged`);
  }
  return img;
}

/**
 * The page data's header and size against the inventory: what readImage
 * checks beyond the index, for an image read with `indexOnly` once its
 * pages file is complete.
 */
export function checkPagesFile(img: Image): void {
  const reader = new PageFileReader(img.dir, img.pagemap.chunks);
  const lengths = reader.payloadLengths;
  reader.close();
  PAGES_FILES.forEach((name, f) => {
    const want = img.inventory.files[name]?.length;
    if (want === undefined || lengths[f] === undefined) return;
    if (lengths[f] !== want) {
      throw new TsnapError('badImage', `${img.dir}/${name} holds ${lengths[f]} bytes, its inventory records ${want}; it was replaced, comes from another image, or is damaged`);
    }
  });
}

/** The image and its ancestors, newest first; a missing or mismatched parent is an error. */
export function readChain(dir: string, opts: ReadOptions & { cache?: Map<string, Image> } = {}): Image[] {
  const chain = [readImage(dir, opts)];
  opts.cache?.set(dir, chain[0]);
  const seen = new Set([chain[0].inventory.imageId]);
  for (;;) {
    const cur = chain[chain.length - 1];
    const ref = cur.inventory.parent;
    if (!ref) {
      if (cur.inventory.kind !== 'full') throw new TsnapError('badImage', `${cur.dir}: the chain ends in a delta without its parent`);
      return chain;
    }
    const pdir = resolve(cur.dir, ref.path);
    // A level read before (`cache`) is taken when it is the image the child names: committed images never change.
    let parent = opts.cache?.get(pdir);
    if (!parent || parent.inventory.imageId !== ref.imageId) {
      try {
        parent = readImage(pdir, opts);
      } catch (err) {
        throw new TsnapError('badImage', `${cur.dir}: its parent image ${pdir} cannot be read (${(err as Error).message})`);
      }
      opts.cache?.set(pdir, parent);
    }
    if (parent.inventory.imageId !== ref.imageId) {
      throw new TsnapError('badImage', `${cur.dir}: parent ${pdir} is image ${parent.inventory.imageId}, expected ${ref.imageId}; the chain was mixed up`);
    }
    if (parent.inventory.pid !== cur.inventory.pid) {
      throw new TsnapError('badImage', `${cur.dir}: parent ${pdir} is an image of process ${parent.inventory.pid}, not ${cur.inventory.pid}; the chain was mixed up`);
    }
    if (seen.has(ref.imageId)) throw new TsnapError('badImage', `${cur.dir}: the parent chain loops`);
    seen.add(ref.imageId);
    chain.push(parent);
  }
}

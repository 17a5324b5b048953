/** Opening an image directory: every metadata file checked, the parent chain resolved. */
import { resolve } from 'node:path';
import { readMetaFile } from './metadata.js';
import { decodePagemap, type EncodedPagemap } from './page-runs.js';
import { FileKind, type Inventory, type ProcessImage, type PagemapImage, type DumpStats } from '../../formats/schema.js';
import { TsnapError } from '../errors.js';

export interface Image {
  dir: string;
  inventory: Inventory;
  /** null for a pre-dump, which holds memory only. */
  process: ProcessImage | null;
  pagemap: PagemapImage;
  stats: DumpStats | null;
}

export function readImage(dir: string): Image {
  const inventory = readMetaFile<Inventory>(dir, FileKind.Inventory);
  const process = inventory.contents === 'predump' ? null : readMetaFile<ProcessImage>(dir, FileKind.Process);
  const encoded = readMetaFile<EncodedPagemap & { vmas?: PagemapImage['vmas'] }>(dir, FileKind.Pagemap);
  const pagemap = { ...decodePagemap(encoded, `${dir}/pagemap`), vmas: encoded.vmas ?? process?.mm.vmas };
  let stats: DumpStats | null = null;
  try { stats = readMetaFile<DumpStats>(dir, FileKind.Stats); } catch { /* optional */ }
  return { dir, inventory, process, pagemap, stats };
}

/** The image and its ancestors, newest first; a missing or mismatched parent is an error. */
export function readChain(dir: string): Image[] {
  const chain = [readImage(dir)];
  const seen = new Set([chain[0].inventory.imageId]);
  for (;;) {
    const cur = chain[chain.length - 1];
    const ref = cur.inventory.parent;
    if (!ref) return chain;
    const pdir = resolve(cur.dir, ref.path);
    let parent: Image;
    try {
      parent = readImage(pdir);
    } catch (err) {
      throw new TsnapError('badImage', `${cur.dir}: its parent image ${pdir} cannot be read (${(err as Error).message})`);
    }
    if (parent.inventory.imageId !== ref.imageId) {
      throw new TsnapError('badImage', `${cur.dir}: parent ${pdir} is image ${parent.inventory.imageId}, expected ${ref.imageId}; the chain was mixed up`);
    }
    if (seen.has(ref.imageId)) throw new TsnapError('badImage', `${cur.dir}: the parent chain loops`);
    seen.add(ref.imageId);
    chain.push(parent);
  }
}

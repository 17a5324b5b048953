/**
 * What `tsnap serve` accepts as a COMMIT: the last iteration received is
 * the final one and is a restorable image — a dump (not a pre-dump) whose
 * parent chain is complete, ends in a full image, and lies entirely inside
 * this migration's directory. Metadata only: every file's length and CRC
 * were already checked as it arrived.
 */
import { resolve } from 'node:path';
import { readImage, type Image } from '../image/image-reader.js';
import { isTreeImage, readTreeManifest, imagedMembers } from '../image/tree-manifest.js';
import { TsnapError } from '../errors.js';
import { inside, wirePid } from './confine.js';

/** `read`: how an image of the chain is read (the receiver passes the ones it checked as they arrived). */
export function checkCommittable(root: string, lastName: string | null, read: (dir: string) => Image = readImage): string {
  if (lastName === null) throw incomplete('no image was sent');
  if (lastName !== 'final') throw incomplete(`the last iteration is ${lastName}, not the final one`);
  const final = inside(root, lastName);
  try {
    if (!isTreeImage(final)) {
      checkChain(root, final, read);
      return final;
    }
    const manifest = readTreeManifest(final);
    if (!Array.isArray(manifest.processes) || manifest.processes.length === 0) throw incomplete('the tree manifest lists no process');
    for (const m of manifest.processes) {
      if (wirePid(m.pid) === null) throw incomplete(`the tree manifest lists ${String(m.pid)} as a pid`);
    }
    for (const m of imagedMembers(manifest)) checkChain(root, inside(final, String(m.dir)), read);
    return final;
  } catch (err) {
    if (err instanceof TsnapError && err.message.startsWith('COMMIT refused')) throw err;
    throw incomplete((err as Error).message);
  }
}

function checkChain(root: string, dir: string, read: (dir: string) => Image): void {
  let cur = read(dir);
  if (cur.inventory.contents === 'predump') throw incomplete(`${dir} is a pre-dump, which holds no process state`);
  const seen = new Set([cur.inventory.imageId]);
  while (cur.inventory.parent) {
    const ref = cur.inventory.parent;
    // Checked before it is opened: a parent path is wire data too.
    const pdir = inside(root, resolve(cur.dir, String(ref.path)));
    if (seen.has(ref.imageId)) throw incomplete(`${cur.dir}: the parent chain loops`);
    seen.add(ref.imageId);
    const parent = read(pdir);
    if (parent.inventory.imageId !== ref.imageId) throw incomplete(`${cur.dir}: its parent ${pdir} is another image`);
    cur = parent;
  }
  if (cur.inventory.kind !== 'full') throw incomplete(`${cur.dir}: the chain ends in a delta without its parent`);
}

function incomplete(why: string): TsnapError {
  return new TsnapError('badImage', `COMMIT refused: the image is not complete: ${why}`);
}

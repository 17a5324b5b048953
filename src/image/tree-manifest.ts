/** The manifest of a process tree image (dump --tree): DIR/tree. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { readMetaFile } from './metadata.js';
import { FileKind, type TreeManifest, type TreeMember } from '../../formats/schema.js';
import { TsnapError } from '../errors.js';

export function isTreeImage(dir: string): boolean {
  return existsSync(join(dir, 'tree'));
}

export function readTreeManifest(dir: string): TreeManifest {
  return readMetaFile<TreeManifest>(dir, FileKind.Tree);
}

/** A member's image must be its process, and the one the manifest recorded. */
export function checkMember(m: TreeMember, inv: { imageId: string; pid: number }, dir: string): void {
  if (m.imageId !== undefined && inv.imageId !== m.imageId) {
    throw new TsnapError('badImage', `${dir} is image ${inv.imageId}, the tree manifest recorded ${m.imageId}; it comes from another dump`);
  }
  if (inv.pid !== m.pid) throw new TsnapError('badImage', `${dir} holds process ${inv.pid}, the tree manifest says ${m.pid}`);
}

/** The members that have an image (all but exited, unreaped children). */
export function imagedMembers(m: TreeManifest): TreeMember[] {
  return m.processes.filter((p) => !p.zombie);
}

/** The manifest of a process tree image (dump --tree): DIR/tree. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { readMetaFile } from './metadata.js';
import { FileKind, type TreeManifest, type TreeMember } from '../../formats/schema.js';

export function isTreeImage(dir: string): boolean {
  return existsSync(join(dir, 'tree'));
}

export function readTreeManifest(dir: string): TreeManifest {
  return readMetaFile<TreeManifest>(dir, FileKind.Tree);
}

/** The members that have an image (all but exited, unreaped children). */
export function imagedMembers(m: TreeManifest): TreeMember[] {
  return m.processes.filter((p) => !p.zombie);
}

/**
 * The single-process images an image directory holds: itself, or each
 * imaged member of a tree image (dump --tree). For the commands that act on
 * every process of an image alike (untrack, release-locks).
 */
import { join } from 'node:path';
import { isTreeImage, readTreeManifest, imagedMembers } from './tree-manifest.js';

export function processImageDirs(dir: string): string[] {
  return isTreeImage(dir) ? imagedMembers(readTreeManifest(dir)).map((m) => join(dir, m.dir)) : [dir];
}

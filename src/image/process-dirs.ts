/**
 * The single-process images an image directory holds: itself, or each
 * imaged member of a tree image (dump --tree). For the commands that act on
 * every process of an image alike (untrack, release-locks), so that they
 * need not know the tree layout.
 */
import { join } from 'node:path';
import { isTreeImage, readTreeManifest, imagedMembers } from './tree-manifest.js';
import { readImage } from './image-reader.js';
import { TsnapError } from '../errors.js';
import type { TrackingRef } from '../../formats/schema.js';

export function processImageDirs(dir: string): string[] {
  return isTreeImage(dir) ? imagedMembers(readTreeManifest(dir)).map((m) => join(dir, m.dir)) : [dir];
}

/** The tracking each process image of a pre-dump left running; refused when one holds none (not a pre-dump). */
export function trackingRefs(dir: string): TrackingRef[] {
  return processImageDirs(dir).map((d) => {
    const ref = readImage(d, { indexOnly: true }).inventory.tracking;
    if (!ref) throw new TsnapError('usage', `${d} is not a pre-dump: it holds no tracking`);
    return ref;
  });
}

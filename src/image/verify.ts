/**
 * `tsnap verify`: every checksum of an image chain (or of every process
 * chain of a tree image) is read and checked, and every parent must be
 * present and be the image its child names. Nothing is written.
 */
import { join } from 'node:path';
import { readChain, type Image } from './image-reader.js';
import { PageFileReader } from './page-file.js';
import { isTreeImage, readTreeManifest, imagedMembers, checkMember } from './tree-manifest.js';
import { PageWhere, PAGES_FILES, type TreeMember } from '../../formats/schema.js';
import { TsnapError } from '../errors.js';
import { PAGE_SIZE } from '../sys/uapi.js';
import { cpuXsaveLayout } from '../sys/cpu.js';

export interface VerifiedImage {
  dir: string;
  imageId: string;
  kind: 'full' | 'delta';
  contents: 'dump' | 'predump';
  chunks: number;
  bytesStored: number;
  pagesStored: number;
}

export interface VerifyResult {
  dir: string;
  tree: boolean;
  /** Per process (one unless a tree): its chain, newest first. */
  processes: { pid: number; chain: VerifiedImage[] }[];
}

/**
 * A thread's XSAVE area saved on a CPU with this one's features must have
 * this CPU's length for them (restore would refuse it); another CPU's
 * features are restore's to judge (a different kind of CPU, not damage).
 */
function checkXsave(img: Image): void {
  const here = cpuXsaveLayout();
  if (!here) return;
  for (const t of img.process?.threads ?? []) {
    const x = t.xstate;
    if (x.length < 472) continue;
    const xcr0 = Buffer.from(x.buffer, x.byteOffset, x.length).readBigUInt64LE(464);
    if (xcr0 === here.xcr0 && x.length !== here.size) {
      throw new TsnapError('badImage', `${img.dir}: thread ${t.tid}'s XSAVE area is ${x.length} bytes, where its features (XCR0 0x${xcr0.toString(16)}) take ${here.size}; the image is damaged`);
    }
  }
}

function verifyImage(img: Image): VerifiedImage {
  checkXsave(img);
  const { chunks, runs } = img.pagemap;
  let pages = 0;
  for (const r of runs) {
    if (r.where !== PageWhere.Here) continue;
    const c = chunks[r.chunk];
    if (!c || r.offset + r.pages * PAGE_SIZE > c.rawLength) {
      throw new TsnapError('badImage', `${img.dir}: page run at 0x${r.start.toString(16)} points outside chunk ${r.chunk}; the image is damaged`);
    }
    pages += r.pages;
  }
  let stored = 0;
  if (chunks.length > 0 || img.inventory.files.pages) {
    const reader = new PageFileReader(img.dir, chunks);
    try {
      // readChunk checks each chunk's CRC and decoded length.
      for (let i = 0; i < chunks.length; i++) { reader.readChunk(i); stored += chunks[i].storedLength; }
      PAGES_FILES.forEach((name, f) => {
        const want = img.inventory.files[name]?.length;
        const got = reader.payloadLengths[f];
        if (want !== undefined && got !== undefined && got !== want) {
          throw new TsnapError('badImage', `${img.dir}/${name} holds ${got} bytes, its inventory says ${want}; the image is damaged`);
        }
      });
    } finally {
      reader.close();
    }
  }
  if (img.inventory.kind === 'full' && runs.some((r) => r.where === PageWhere.Parent)) {
    throw new TsnapError('badImage', `${img.dir}: a full image refers to pages of a parent`);
  }
  return {
    dir: img.dir, imageId: img.inventory.imageId, kind: img.inventory.kind, contents: img.inventory.contents ?? 'dump',
    chunks: chunks.length, bytesStored: stored, pagesStored: pages,
  };
}

function verifyChain(dir: string, member?: TreeMember): { pid: number; chain: VerifiedImage[] } {
  // readChain checks every metadata file (CRC, shape, binding to its
  // inventory), that each parent exists and is the image its child names,
  // that the chain does not loop and ends in a full image.
  const chain = readChain(dir);
  if (member) checkMember(member, chain[0].inventory, dir);
  return { pid: chain[0].inventory.pid, chain: chain.map(verifyImage) };
}

export function verify(dir: string): VerifyResult {
  if (!isTreeImage(dir)) return { dir, tree: false, processes: [verifyChain(dir)] };
  const manifest = readTreeManifest(dir);
  return { dir, tree: true, processes: imagedMembers(manifest).map((m) => verifyChain(join(dir, m.dir), m)) };
}

/** Running the real CLI and reading images back, for end-to-end tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { readImage, type Image } from '../../src/image/image-reader.js';
import { PageFileReader } from '../../src/image/page-file.js';
import { PageWhere } from '../../formats/schema.js';

export const TSNAP_BIN = fileURLToPath(new URL('../../bin/tsnap', import.meta.url));

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function startTsnap(args: string[]): { child: ChildProcess; done: Promise<CliResult> } {
  const child = spawn(process.execPath, [TSNAP_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => { stdout += d; });
  child.stderr!.on('data', (d) => { stderr += d; });
  const done = new Promise<CliResult>((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return { child, done };
}

export function tsnap(...args: string[]): Promise<CliResult> {
  return startTsnap(args).done;
}

/** Every page an image stores, as [address, bytes] pairs in address order. */
export function* storedPages(img: Image): Generator<{ addr: number; data: Buffer }> {
  const reader = new PageFileReader(img.dir, img.pagemap.chunks);
  try {
    let cached = -1;
    let chunk = Buffer.alloc(0);
    for (const r of img.pagemap.runs) {
      if (r.where !== PageWhere.Here) continue;
      if (r.chunk !== cached) { chunk = reader.readChunk(r.chunk); cached = r.chunk; }
      yield { addr: r.start, data: chunk.subarray(r.offset, r.offset + r.pages * 4096) };
    }
  } finally {
    reader.close();
  }
}

/** Set of page addresses the image stores. */
export function storedPageSet(img: Image): Set<number> {
  const s = new Set<number>();
  for (const r of img.pagemap.runs) {
    if (r.where !== PageWhere.Here) continue;
    for (let i = 0; i < r.pages; i++) s.add(r.start + i * 4096);
  }
  return s;
}

export { readImage };

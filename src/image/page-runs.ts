/** Compact encoding of the page index: one 5-element array per run. */
import { PageRun, PageWhere, PagemapImage, ChunkEntry, PAGES_FILES } from '../../formats/schema.js';
import { TsnapError } from '../errors.js';
import { USER_END } from './image-shapes.js';
import { PAGE_SIZE } from '../sys/uapi.js';
import { emptyTable, tableFromRuns, pagemapWithTable, type RunTable } from './run-table.js';

type EncodedRun = [number, number, number, number, number];
/** [fileOffset, storedLength, rawLength, codec, crc32], and a sixth entry, the pages file, when it is not 0 (format 2). */
type EncodedChunk = [number, number, number, number, number] | [number, number, number, number, number, number];
const CODECS = ['none', 'lz4'] as const;

export interface EncodedPagemap {
  chunks: EncodedChunk[];
  runs: EncodedRun[];
}

export function encodePagemap(p: PagemapImage): EncodedPagemap {
  return {
    chunks: p.chunks.map((c): EncodedChunk => (c.file
      ? [c.fileOffset, c.storedLength, c.rawLength, CODECS.indexOf(c.codec), c.crc32, c.file]
      : [c.fileOffset, c.storedLength, c.rawLength, CODECS.indexOf(c.codec), c.crc32])),
    runs: p.runs.map((r) => [r.start, r.pages, r.where, r.chunk, r.offset]),
  };
}

export function decodePagemap(e: EncodedPagemap, file: string): PagemapImage {
  // Indexed, not destructured: array destructuring walks the iterator protocol, and this runs once
  // per restore in cold code over every run of every level of a chain (~2 us a run).
  const chunks: ChunkEntry[] = e.chunks.map((c, i) => {
    const fileOffset = c[0], storedLength = c[1], rawLength = c[2], codec = c[3], crc32 = c[4], inFile = c[5];
    const name = CODECS[codec];
    if (!name) throw new TsnapError('badImage', `${file}: unknown chunk codec ${codec}`);
    // A raw chunk is its data; an lz4 one never exceeds LZ4's worst case plus its length prefix.
    if (name === 'none' ? storedLength !== rawLength : storedLength > rawLength + Math.ceil(rawLength / 255) + 64) {
      throw new TsnapError('badImage', `${file}: chunk ${i} stores ${storedLength} bytes for ${rawLength} (${name}); the image is damaged`);
    }
    return { fileOffset, storedLength, rawLength, codec: name, crc32, ...(inFile ? { file: inFile } : {}) };
  });
  // Straight into columns (run-table.ts): no object per run unless a reader asks for `.runs`.
  const n = e.runs.length;
  const t = emptyTable(n);
  for (let i = 0; i < n; i++) {
    const r = e.runs[i];
    t.start[i] = r[0];
    t.pages[i] = r[1];
    t.where[i] = r[2];
    t.chunk[i] = r[3];
    t.offset[i] = r[4];
  }
  validateTable(t, chunks, file);
  return pagemapWithTable(chunks, t);
}

/** Rejects an index that would make a reader misplace pages. */
export function validateRuns(runs: PageRun[], chunks: ChunkEntry[], file: string): void {
  validateTable(tableFromRuns(runs), chunks, file);
}

/** validateRuns over columns. */
export function validateTable(t: RunTable, chunks: readonly ChunkEntry[], file: string): void {
  let prevEnd = 0;
  const { start, pages, where, chunk, offset } = t;
  for (let i = 0; i < t.length; i++) {
    const s = start[i], p = pages[i], c = chunk[i], o = offset[i], w = where[i];
    const bad = (why: string) => new TsnapError('badImage', `${file}: invalid page run at 0x${s.toString(16)}: ${why}`);
    // NaN and fractions would slip past every comparison below.
    if (!Number.isSafeInteger(s) || !Number.isSafeInteger(p) || !Number.isSafeInteger(c) || !Number.isSafeInteger(o)) throw bad('non-integer field');
    if (s % PAGE_SIZE !== 0 || p <= 0) throw bad('misaligned or empty');
    if (s + p * PAGE_SIZE > USER_END) throw bad('beyond the user address space');
    if (s < prevEnd) throw bad('runs overlap or are not sorted');
    if (w === PageWhere.Here) {
      const ch = chunks[c];
      if (!ch) throw bad(`chunk ${c} does not exist`);
      if (o < 0 || o % PAGE_SIZE !== 0 || o + p * PAGE_SIZE > ch.rawLength) throw bad('run exceeds its chunk');
    } else if (w !== PageWhere.Parent && w !== PageWhere.Zero) {
      throw bad(`unknown location ${w}`);
    }
    prevEnd = s + p * PAGE_SIZE;
  }
}

/**
 * The chunks tile the page data exactly, as the writer lays them out (in
 * any index order), in each pages file: no gap, no overlap, nothing past or
 * after the end, and none larger than the image's chunk size.
 * `payloadLengths[f]`: the page data of pages file f (PAGES_FILES).
 */
export function validateChunkLayout(chunks: readonly ChunkEntry[], payloadLengths: readonly number[], chunkSize: number, file: string): void {
  payloadLengths.forEach((payloadLength, f) => {
    const order = chunks.map((c, i) => ({ c, i })).filter(({ c }) => (c.file ?? 0) === f).sort((a, b) => a.c.fileOffset - b.c.fileOffset);
    const name = PAGES_FILES[f];
    let end = 0;
    for (const { c, i } of order) {
      if (c.rawLength > chunkSize) throw new TsnapError('badImage', `${file}: chunk ${i} holds ${c.rawLength} bytes, more than the image's chunk size ${chunkSize}`);
      if (c.fileOffset !== end) throw new TsnapError('badImage', `${file}: chunk ${i} starts at byte ${c.fileOffset} of the page data of ${name}, expected ${end}; the index is damaged`);
      end += c.storedLength;
    }
    if (end !== payloadLength) throw new TsnapError('badImage', `${file}: the chunks cover ${end} bytes of page data in ${name}, the image has ${payloadLength}; the index is damaged`);
  });
  const past = chunks.findIndex((c) => (c.file ?? 0) >= payloadLengths.length);
  if (past >= 0) throw new TsnapError('badImage', `${file}: chunk ${past} is in ${PAGES_FILES[chunks[past].file!] ?? `pages file ${chunks[past].file}`}, which the image does not record; the index is damaged`);
}

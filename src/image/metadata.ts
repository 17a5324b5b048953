/**
 * Metadata files: header + one msgpack document. 64-bit values that may not
 * fit a double (registers, signal masks) travel as BigInt; everything else
 * as plain numbers. Unknown fields are kept by the decoder and ignored by
 * the code, so a newer minor writer stays readable. Every document is
 * checked against its shape (image-shapes.ts) before it is returned.
 */
import { openSync, writeSync, closeSync, readFileSync, fsyncSync } from 'node:fs';
import { join } from 'node:path';
import { Packr } from 'msgpackr';
import { encodeHeader, decodeHeader } from './header.js';
import { crc32 } from './checksum.js';
import { FORMAT_VERSION, HEADER_SIZE, FileKind, FILE_NAMES, PROCESS_FLAG_SECCOMP, PROCESS_FLAG_RECORDS } from '../../formats/schema.js';
import { TsnapError, withPath } from '../errors.js';
import { checkShape } from './shape.js';
import { SHAPE_OF } from './image-shapes.js';

export const packr = new Packr({ useRecords: false, mapsAsObjects: true });
/**
 * The process file's writer (PROCESS_FLAG_RECORDS): its 10 000 VMA objects
 * of one key set become one structure and rows of values. Decoding such a
 * file is ~7x faster than one map per VMA (10 000 VMAs: 10.4 -> 1.5 ms here,
 * and a third of the bytes: the restore's largest JavaScript cost after the
 * page fill). `packr` decodes both: msgpackr reads records whatever its
 * own writer does. TSNAP_IMAGE_RECORDS=0: plain maps, as before (bench A/B).
 */
const recordsPackr = new Packr({ useRecords: true, mapsAsObjects: true });
const useRecords = (kind: FileKind) => kind === FileKind.Process && process.env.TSNAP_IMAGE_RECORDS !== '0';

export interface WrittenFile {
  length: number;
  crc32: number;
}

/** Writes `value` as the metadata file of `kind` in `dir`, mode 0600. */
export function writeMetaFile(dir: string, kind: FileKind, value: unknown, fsync = false, version = FORMAT_VERSION): WrittenFile {
  const records = useRecords(kind);
  const payload = (records ? recordsPackr : packr).pack(value);
  const crc = crc32(payload);
  const header = encodeHeader({ version, kind, flags: headerFlags(kind, value) | (records ? PROCESS_FLAG_RECORDS : 0), payloadLength: payload.length, payloadCrc: crc });
  const path = join(dir, FILE_NAMES[kind]);
  const fd = openSync(path, 'wx', 0o600);
  try {
    writeAll(fd, header);
    writeAll(fd, payload);
    if (fsync) fsyncSync(fd);
  } catch (err) {
    throw withPath(err, path);
  } finally {
    closeSync(fd);
  }
  return { length: payload.length, crc32: crc };
}

/** The must-understand flags a document needs (PROCESS_FLAG_SECCOMP); PROCESS_FLAG_RECORDS is the writer's. */
function headerFlags(kind: FileKind, value: unknown): number {
  return kind === FileKind.Process && hasSeccomp(value) ? PROCESS_FLAG_SECCOMP : 0;
}

function hasSeccomp(value: unknown): boolean {
  const threads = (value as { threads?: { seccomp?: unknown }[] } | null)?.threads;
  return Array.isArray(threads) && threads.some((t) => t?.seccomp !== undefined);
}

const KNOWN_FLAGS: Partial<Record<FileKind, number>> = { [FileKind.Process]: PROCESS_FLAG_SECCOMP | PROCESS_FLAG_RECORDS };

function writeAll(fd: number, buf: Buffer): void {
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
}

/** A decoded metadata file and its payload's length and CRC (what the inventory records). */
export interface ReadFile<T> {
  value: T;
  length: number;
  crc32: number;
}

/** Reads, checks, decodes and validates a metadata file; errors name the file. */
export function readMetaFile<T>(dir: string, kind: FileKind): T {
  return readMetaFileEntry<T>(dir, kind).value;
}

export function readMetaFileEntry<T>(dir: string, kind: FileKind): ReadFile<T> {
  const path = join(dir, FILE_NAMES[kind]);
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') {
      throw new TsnapError('badImage', `${path}: missing; ${kind === FileKind.Inventory ? 'not a tsnap image, or the dump did not complete' : 'the image is incomplete'}`);
    }
    throw new TsnapError(e.code === 'EACCES' ? 'permission' : 'badImage', `${path}: cannot read (${e.code})`);
  }
  const h = decodeHeader(data, path, kind, KNOWN_FLAGS[kind] ?? 0);
  const payload = data.subarray(HEADER_SIZE);
  if (payload.length < h.payloadLength) {
    throw new TsnapError('badImage', `${path}: truncated (${payload.length} of ${h.payloadLength} bytes); the image is damaged`);
  }
  // Longer than its header says: not truncated, but written to (or appended to) after the dump all the same.
  if (payload.length > h.payloadLength) {
    throw new TsnapError('badImage', `${path}: ${payload.length - h.payloadLength} byte${payload.length - h.payloadLength === 1 ? '' : 's'} past the end its header records (${h.payloadLength} bytes); the image is damaged`);
  }
  if (crc32(payload) !== h.payloadCrc) {
    throw new TsnapError('badImage', `${path}: checksum mismatch; the image is corrupted`);
  }
  let value: unknown;
  try {
    value = packr.unpack(payload);
  } catch (err) {
    throw new TsnapError('badImage', `${path}: undecodable metadata (${oneLine(err)}); the image is corrupted`);
  }
  const checked = checkShape<T>(SHAPE_OF[kind], value, path);
  // The flag and the fields go together: either alone is a writer's bug or damage.
  if ((h.flags & PROCESS_FLAG_SECCOMP) !== 0 !== (kind === FileKind.Process && hasSeccomp(checked))) {
    throw new TsnapError('badImage', `${path}: the header's seccomp flag and the threads' seccomp state disagree; the image is corrupted`);
  }
  return { value: checked, length: h.payloadLength, crc32: h.payloadCrc };
}

/** A decoder's message, which may quote the bad bytes, as one line. */
function oneLine(err: unknown): string {
  return String((err as Error)?.message ?? err).replace(/[\x00-\x1f\x7f]/g, '?').slice(0, 200);
}

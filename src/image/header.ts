/** The 32-byte header at the start of every image file. See formats/image-v1.md. */
import { crc32 } from './checksum.js';
import { READ_VERSIONS, MAGIC, HEADER_SIZE, FileKind } from '../../formats/schema.js';
import { TsnapError } from '../errors.js';

export interface FileHeader {
  version: number;
  kind: FileKind;
  flags: number;
  payloadLength: number;
  payloadCrc: number;
}

export function encodeHeader(h: FileHeader): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.write(MAGIC, 0, 'latin1');
  b.writeUInt16LE(h.version, 8);
  b.writeUInt16LE(h.kind, 10);
  b.writeUInt32LE(h.flags, 12);
  b.writeBigUInt64LE(BigInt(h.payloadLength), 16);
  b.writeUInt32LE(h.payloadCrc >>> 0, 24);
  b.writeUInt32LE(crc32(b.subarray(0, 28)), 28);
  return b;
}

/** Decodes and checks a header; `file` names the file in errors. */
export function decodeHeader(b: Buffer, file: string, expect: FileKind, knownFlags = 0): FileHeader {
  if (b.length < HEADER_SIZE) {
    throw new TsnapError('badImage', `${file}: truncated (${b.length} bytes, no complete header); the image is damaged, dump again`);
  }
  if (b.toString('latin1', 0, 8) !== MAGIC) {
    throw new TsnapError('badImage', `${file}: not a tsnap image file (bad magic)`);
  }
  const version = b.readUInt16LE(8);
  const newest = READ_VERSIONS[READ_VERSIONS.length - 1];
  if (!READ_VERSIONS.includes(version)) {
    throw new TsnapError('badImage', version > newest
      ? `${file}: image format version ${version} is newer than this tsnap reads (${newest}); upgrade tsnap`
      : `${file}: image format version ${version} is not supported (this tsnap reads ${READ_VERSIONS.join(' and ')})`);
  }
  if (crc32(b.subarray(0, 28)) !== b.readUInt32LE(28)) {
    throw new TsnapError('badImage', `${file}: header checksum mismatch; the image is corrupted`);
  }
  const kind = b.readUInt16LE(10) as FileKind;
  if (kind !== expect) {
    throw new TsnapError('badImage', `${file}: holds file kind ${kind}, expected ${expect}; the image was mixed up or corrupted`);
  }
  // A flag the caller does not know means a writer this tsnap does not know, or damage.
  const flags = b.readUInt32LE(12);
  if ((flags & ~knownFlags) !== 0) throw new TsnapError('badImage', `${file}: header flags 0x${flags.toString(16)} are not defined in format ${version}; the image is corrupted or from a newer tsnap`);
  const payloadLength = b.readBigUInt64LE(16);
  if (payloadLength > BigInt(Number.MAX_SAFE_INTEGER)) throw new TsnapError('badImage', `${file}: header says ${payloadLength} bytes of payload; the image is corrupted`);
  return { version, kind, flags, payloadLength: Number(payloadLength), payloadCrc: b.readUInt32LE(24) };
}

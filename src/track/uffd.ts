/**
 * userfaultfd ioctls, issued by tsnap on its own copy of a target's uffd.
 * They act on the mm the uffd was created in (the target's), not on the
 * caller's: that is what lets a tool register and arm another process.
 */
import { ioctl, SysError, UFFD_API, UFFDIO_API, UFFDIO_REGISTER, UFFDIO_WRITEPROTECT,
  UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT_MODE_WP } from '../sys/index.js';

export function uffdApi(fd: number, features: number): { features: bigint; ioctls: bigint } {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(BigInt(UFFD_API), 0);
  b.writeBigUInt64LE(BigInt(features), 8);
  ioctl(fd, UFFDIO_API, b, 'ioctl(UFFDIO_API)');
  return { features: b.readBigUInt64LE(8), ioctls: b.readBigUInt64LE(16) };
}

/** Registers [start, start+len) for write-protect tracking. Throws SysError (EBUSY, EPERM, EINVAL). */
export function uffdRegisterWp(fd: number, start: number, len: number): void {
  const b = Buffer.alloc(32);
  b.writeBigUInt64LE(BigInt(start), 0);
  b.writeBigUInt64LE(BigInt(len), 8);
  b.writeBigUInt64LE(BigInt(UFFDIO_REGISTER_MODE_WP), 16);
  ioctl(fd, UFFDIO_REGISTER, b, `ioctl(UFFDIO_REGISTER 0x${start.toString(16)}+${len})`);
}

/** Sets (wp) or clears write protection of a range. */
export function uffdWriteProtect(fd: number, start: number, len: number, wp: boolean): void {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(BigInt(start), 0);
  b.writeBigUInt64LE(BigInt(len), 8);
  b.writeBigUInt64LE(BigInt(wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0), 16);
  ioctl(fd, UFFDIO_WRITEPROTECT, b, 'ioctl(UFFDIO_WRITEPROTECT)');
}

export { SysError };

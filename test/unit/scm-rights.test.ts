/** The ancillary-data codec of files in flight (SCM_RIGHTS, SCM_CREDENTIALS) and the shape of a queue in the image. */
import { describe, it, expect } from 'vitest';
import { decodeControl, encodeControl, checkInflightRestored, withInflight } from '../../src/files/scm-rights.js';
import type { FdImage } from '../../formats/schema.js';
import { checkShape } from '../../src/image/shape.js';
import { SCM } from '../../src/image/image-shapes.js';

/** One struct cmsghdr record as the kernel lays it out on x86-64 (len, level, type, data, padded to 8). */
function cmsg(level: number, type: number, data: Buffer): Buffer {
  const b = Buffer.alloc((16 + data.length + 7) & ~7);
  b.writeBigUInt64LE(BigInt(16 + data.length), 0);
  b.writeInt32LE(level, 8);
  b.writeInt32LE(type, 12);
  data.copy(b, 16);
  return b;
}
const ints = (...v: number[]) => Buffer.from(new Int32Array(v).buffer);

describe('SCM control messages', () => {
  it('encodes fds and credentials as the kernel lays them out, and decodes them back', () => {
    const b = encodeControl([7, 9, 11], { pid: 1234, uid: 1000, gid: 100 });
    // CMSG_SPACE(12) = 32, then CMSG_SPACE(12) = 32.
    expect(b.length).toBe(64);
    expect(b.equals(Buffer.concat([cmsg(1, 1, ints(7, 9, 11)), cmsg(1, 2, ints(1234, 1000, 100))]))).toBe(true);
    expect(decodeControl(b)).toEqual({ fds: [7, 9, 11], creds: { pid: 1234, uid: 1000, gid: 100 }, extraFds: [], others: [] });
  });

  it('no files and no credentials: no control at all', () => {
    expect(encodeControl([], null).length).toBe(0);
    expect(decodeControl(Buffer.alloc(0))).toEqual({ fds: [], creds: null, extraFds: [], others: [] });
  });

  it('fds of several SCM_RIGHTS records in order; a pidfd apart (to close); other types named; a record running past the end stops', () => {
    const b = Buffer.concat([
      cmsg(1, 1, ints(3)), cmsg(1, 4, ints(5)), cmsg(1, 1, ints(4, 6)), cmsg(1, 3, Buffer.from('label\0')),
    ]);
    expect(decodeControl(b)).toEqual({ fds: [3, 4, 6], creds: null, extraFds: [5], others: [3] });
    const cut = cmsg(1, 1, ints(8, 9)).subarray(0, 20);
    expect(decodeControl(Buffer.concat([cmsg(1, 1, ints(3)), cut])).fds).toEqual([3]);
  });

  it('uids above 2^31 survive (overflow uid 65534, nobody on some systems 4294967294)', () => {
    const c = decodeControl(encodeControl([], { pid: 1, uid: 4294967294, gid: 4294967295 }));
    expect(c.creds).toEqual({ pid: 1, uid: 4294967294, gid: 4294967295 });
  });

  it('more than SCM_MAX_FD (253) files in one message is a damaged image', () => {
    expect(() => encodeControl(Array.from({ length: 254 }, (_, i) => i + 3), null)).toThrow(/at most 253/);
  });
});

describe('a queue in the image', () => {
  const file = (fd: number) => ({ fd, kind: 'pipe', link: 'pipe:[5]', path: null, flags: 0, pos: 0, file: null, ofd: 3 });
  const msg = (fds: number[]) => ({ data: Buffer.from('x'), fds, creds: { pid: 10, uid: 0, gid: 0 } });
  it('messages name files in flight of the same queue only', () => {
    expect(() => checkShape(SCM, { messages: [msg([20]), msg([])], files: [file(20)] }, 'x')).not.toThrow();
    expect(() => checkShape(SCM, { messages: [msg([21])], files: [file(20)] }, 'x')).toThrow(/names fd 21, which is not among the files in flight/);
  });
});

describe('restore of a queue', () => {
  const inflight = (fd: number) => ({ fd, kind: 'file', link: '/x', path: '/x', flags: 0, pos: 0, file: null, ofd: 9 }) as FdImage;
  const owner = {
    fd: 4, kind: 'socket', link: 'socket:[7]', path: null, flags: 2, pos: 0, file: null,
    socket: { scm: { messages: [{ data: Buffer.from('a'), fds: [10, 11], creds: { pid: 1, uid: 0, gid: 0 } }], files: [inflight(10), inflight(11)] } },
  } as unknown as FdImage;
  it('the files in flight are created with the process\'s fds, at their own numbers', () => {
    expect(withInflight([owner]).map((f) => f.fd)).toEqual([4, 10, 11]);
  });
  it('self-check: the count of files in flight the kernel shows (fdinfo scm_fds) must be the image\'s', () => {
    const out: string[] = [];
    checkInflightRestored([owner], () => ({ scm_fds: '2' }), out);
    expect(out).toEqual([]);
    checkInflightRestored([owner], () => ({ scm_fds: '1' }), out);
    expect(out).toEqual(['fd 4 (socket:[7]): 1 files in flight, the image\'s 2']);
  });
});

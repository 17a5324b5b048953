/** The one struct uffd_msg decoder (src/sys/uffd-msg.ts), on messages laid out as the kernel writes them. */
import { describe, it, expect } from 'vitest';
import { decodeUffdMsg, decodeUffdMsgs } from '../../src/sys/uffd-msg.js';
import { UFFD_EVENT, UFFD_MSG_SIZE } from '../../src/sys/uapi.js';

/** One 32-byte message: event byte, then the union's u64s from byte 8 (linux/userfaultfd.h). */
function msg(event: number, words: bigint[], u32At8?: number): Buffer {
  const b = Buffer.alloc(UFFD_MSG_SIZE);
  b[0] = event;
  words.forEach((w, i) => b.writeBigUInt64LE(w, 8 + i * 8));
  if (u32At8 !== undefined) b.writeUInt32LE(u32At8, 8);
  return b;
}

describe('uffd_msg', () => {
  it('is 32 bytes', () => expect(UFFD_MSG_SIZE).toBe(32));

  it('decodes a page fault: address, and the WRITE and WP flags', () => {
    expect(decodeUffdMsg(msg(UFFD_EVENT.PAGEFAULT, [0n, 0x7f0000001000n]), 0))
      .toEqual({ event: 'fault', code: 0x12, addr: 0x7f0000001000, write: false, wp: false });
    expect(decodeUffdMsg(msg(UFFD_EVENT.PAGEFAULT, [1n, 0x1000n]), 0)).toMatchObject({ write: true, wp: false });
    // A write to a write-protected page: both flags.
    expect(decodeUffdMsg(msg(UFFD_EVENT.PAGEFAULT, [3n, 0x2000n, 1234n]), 0)).toMatchObject({ addr: 0x2000, write: true, wp: true });
  });

  it('decodes fork (a u32 fd), remap, remove and unmap; an unknown event keeps its code', () => {
    expect(decodeUffdMsg(msg(UFFD_EVENT.FORK, [], 17), 0)).toEqual({ event: 'fork', code: 0x13, fd: 17 });
    expect(decodeUffdMsg(msg(UFFD_EVENT.REMAP, [0x10000n, 0x20000n, 0x3000n]), 0)).toEqual({ event: 'remap', code: 0x14, from: 0x10000, to: 0x20000, len: 0x3000 });
    expect(decodeUffdMsg(msg(UFFD_EVENT.REMOVE, [0x4000n, 0x6000n]), 0)).toEqual({ event: 'remove', code: 0x15, start: 0x4000, end: 0x6000 });
    expect(decodeUffdMsg(msg(UFFD_EVENT.UNMAP, [0x4000n, 0x6000n]), 0)).toEqual({ event: 'unmap', code: 0x16, start: 0x4000, end: 0x6000 });
    expect(decodeUffdMsg(msg(0x42, [1n]), 0)).toEqual({ event: 'unknown', code: 0x42 });
  });

  it('a read of several: message i at i * 32; a partial trailing message is not one', () => {
    const buf = Buffer.concat([msg(UFFD_EVENT.UNMAP, [0x1000n, 0x2000n]), msg(UFFD_EVENT.PAGEFAULT, [2n, 0x5000n]), Buffer.alloc(UFFD_MSG_SIZE)]);
    expect(decodeUffdMsg(buf, 1)).toMatchObject({ event: 'fault', addr: 0x5000, wp: true });
    expect(decodeUffdMsgs(buf, 2 * UFFD_MSG_SIZE + 8).map((m) => m.event)).toEqual(['unmap', 'fault']);
    expect(decodeUffdMsgs(buf, 0)).toEqual([]);
  });
});

/**
 * struct uffd_msg, as read(2) on a userfaultfd returns it: 32 bytes, the
 * event code in byte 0, the event's union from byte 8. One decoder for
 * both users of userfaultfd: the lazy pager (MISSING faults, fork and
 * remap events) and the copy-on-write fault server (write-protect faults,
 * memory leaving under the copy). Callable from a worker thread (no
 * koffi, no Node handles).
 */
import { UFFD_EVENT, UFFD_MSG_SIZE } from './uapi.js';

/** uffd_msg.arg.pagefault.flags */
export const UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0;
export const UFFD_PAGEFAULT_FLAG_WP = 1 << 1;

/** `code`: the raw event byte (what a report of an event that went wrong records). */
export type UffdMsg =
  | { event: 'fault'; code: number; addr: number; write: boolean; wp: boolean }
  | { event: 'fork'; code: number; fd: number }
  | { event: 'remap'; code: number; from: number; to: number; len: number }
  | { event: 'remove' | 'unmap'; code: number; start: number; end: number }
  | { event: 'unknown'; code: number };

/** Message `i` of a buffer filled by read(uffd). */
export function decodeUffdMsg(buf: Buffer, i: number): UffdMsg {
  const at = i * UFFD_MSG_SIZE;
  const code = buf[at];
  const u64 = (n: number) => Number(buf.readBigUInt64LE(at + 8 + n * 8));
  switch (code) {
    case UFFD_EVENT.PAGEFAULT: {
      const flags = u64(0);
      return { event: 'fault', code, addr: u64(1), write: (flags & UFFD_PAGEFAULT_FLAG_WRITE) !== 0, wp: (flags & UFFD_PAGEFAULT_FLAG_WP) !== 0 };
    }
    case UFFD_EVENT.FORK: return { event: 'fork', code, fd: buf.readUInt32LE(at + 8) };
    case UFFD_EVENT.REMAP: return { event: 'remap', code, from: u64(0), to: u64(1), len: u64(2) };
    case UFFD_EVENT.REMOVE: return { event: 'remove', code, start: u64(0), end: u64(1) };
    case UFFD_EVENT.UNMAP: return { event: 'unmap', code, start: u64(0), end: u64(1) };
    default: return { event: 'unknown', code };
  }
}

/** The whole messages in the first `bytes` bytes of `buf`. */
export function decodeUffdMsgs(buf: Buffer, bytes: number): UffdMsg[] {
  const out: UffdMsg[] = [];
  for (let i = 0; (i + 1) * UFFD_MSG_SIZE <= bytes; i++) out.push(decodeUffdMsg(buf, i));
  return out;
}

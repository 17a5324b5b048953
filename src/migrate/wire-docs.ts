/**
 * The shape of every control message of the migration protocol
 * (formats/wire-v1.md, wire-v2.md). The frame CRC proves a message arrived as sent, not
 * that the peer is a tsnap that sent something sensible: every decoded
 * document is checked here before either side reads a field of it.
 */
import { type Shape, int, num, str, obj, opt, arr, tuple, bool, checkShape, U32, SAFE } from '../image/shape.js';
import { VMAS, USER_END } from '../image/image-shapes.js';

const PID = int(1, 1 << 22);
const PATH = str(4096);
const MESSAGE = str(4096);

/** By message name (the `Msg` enum's), so that this module does not depend on the framing. */
const SHAPES: Record<string, Shape> = {
  Hello: obj({ magic: str(64), version: int(0, 0xffff), token: str(4096), pid: PID, tool: opt(str(64)) }),
  HelloOk: obj({ version: int(0, 0xffff), dir: PATH }),
  Error: obj({ code: str(64), message: MESSAGE }),
  // An iteration's name becomes a directory of the receiver's: one plain name.
  IterBegin: obj({ name: str(64, /^[A-Za-z0-9_-]+$/), ready: opt(bool) }),
  Ready: obj({}),
  FileBegin: obj({ name: str(255) }),
  FileEnd: obj({ length: SAFE, crc32: U32 }),
  IterEnd: obj({}),
  // The same VMA list an image's pagemap holds; zero ranges as [start, end).
  Layout: obj({ vmas: VMAS, zero: arr(tuple(int(0, USER_END), int(0, USER_END)), 1 << 22), incremental: bool }),
  Postcopy: obj({ ranges: arr(tuple(int(0, USER_END), int(0, USER_END)), 1 << 22) }),
  Commit: obj({}),
  Committed: obj({ dir: PATH, live: opt(bool) }),
  Restored: obj({ pid: PID, restoreUs: num(0, 1e16), path: opt(str(16)), fallback: opt(MESSAGE), sinceCommitUs: opt(num(0, 1e16)) }),
  RestoreFailed: obj({ message: MESSAGE, dir: PATH }),
  PageRequest: obj({ ranges: arr(tuple(int(0, USER_END), int(0, USER_END)), 4096) }),
  PostcopyDone: obj({ pages: SAFE }),
};

/**
 * Checks a decoded control message of type `name`; returns it typed, or
 * throws the bad-image error (one line) naming the message and the field.
 * A type without a shape here must at least be a map.
 */
export function checkWireDoc<T>(name: string, doc: unknown): T {
  return checkShape<T>(SHAPES[name] ?? obj({}), doc, `migration stream: ${name} message`, 'the peer is not a compatible tsnap, or the stream is corrupted');
}

/**
 * The migration wire protocol, version 2 (formats/wire-v2.md): framed
 * messages over one TCP (or TLS) stream. Every frame carries its own CRC-32.
 *
 *   u32 length of payload | u8 type | u32 crc32(payload) | payload
 *
 * Control frames carry one msgpack document; FILE_DATA and PAGE_CHUNK carry
 * raw bytes (PAGE_CHUNK: migrate/page-stream.ts).
 */
import type { Socket } from 'node:net';
import { packr } from '../image/metadata.js';
import { crc32 } from '../image/checksum.js';
import { TsnapError } from '../errors.js';
import { checkWireDoc } from './wire-docs.js';

export const WIRE_VERSION = 2;
export const WIRE_MAGIC = 'TSNAPWIRE';
export const FRAME_HEADER = 9;
/** Largest frame accepted: a data frame carries at most one 1 MiB piece. */
export const MAX_FRAME = 4 << 20;

export enum Msg {
  Hello = 1,
  HelloOk = 2,
  Error = 3,
  IterBegin = 10,
  FileBegin = 11,
  FileData = 12,
  FileEnd = 13,
  IterEnd = 14,
  /** v2: the round's address space, before its pages (streamed rounds). */
  Layout = 15,
  /** v2: one chunk of page data with the runs it holds (binary, page-stream.ts). */
  PageChunk = 16,
  /** v2 post-copy: the final round's pages left out of it, which the receiver's process gets lazily (before COMMIT). */
  Postcopy = 17,
  /**
   * v2, R -> S: the receiver has done what it does before the source
   * freezes (an ITER_BEGIN with `ready: true` asks for it); the sender
   * freezes only then (receiver-ready.ts).
   */
  Ready = 18,
  Commit = 20,
  Committed = 21,
  Restored = 22,
  RestoreFailed = 23,
  /** v2 post-copy, R -> S: pages the receiver's process faulted on, wanted first. */
  PageRequest = 24,
  /** v2 post-copy, S -> R: pages of the post-copy set (binary, postcopy-wire.ts). */
  PageData = 25,
  /** v2 post-copy, R -> S: every page is in the process; the source may go. */
  PostcopyDone = 26,
}

export interface Frame {
  type: Msg;
  payload: Buffer;
}

export function encodeFrame(type: Msg, payload: Buffer): Buffer[] {
  const h = Buffer.alloc(FRAME_HEADER);
  h.writeUInt32LE(payload.length, 0);
  h.writeUInt8(type, 4);
  h.writeUInt32LE(crc32(payload), 5);
  return [h, payload];
}

export function encodeDoc(type: Msg, doc: unknown): Buffer[] {
  return encodeFrame(type, packr.pack(doc));
}

/** Decodes a control message and checks its shape (wire-docs.ts) before anyone reads it. */
/**
 * A HELLO, decoded without its shape: the receiver checks its fields one by
 * one, the version first, so that a sender of another version is told so
 * (and a bad pid is named) rather than refused as malformed.
 */
export function decodeHello(f: Frame): unknown {
  try {
    return packr.unpack(f.payload);
  } catch {
    throw new TsnapError('badImage', 'migration stream: undecodable HELLO message');
  }
}

export function decodeDoc<T>(f: Frame): T {
  let doc: unknown;
  try {
    doc = packr.unpack(f.payload);
  } catch {
    throw new TsnapError('badImage', `migration stream: undecodable ${Msg[f.type] ?? f.type} message`);
  }
  return checkWireDoc<T>(Msg[f.type] ?? String(f.type), doc);
}

/**
 * Reads frames from a socket one at a time. Pausing between reads is what
 * gives backpressure: the sender's writes block (TCP window) while this
 * side is busy writing files.
 */
export class FrameReader {
  /**
   * What arrived and is not yet a frame, as the socket delivered it: joined
   * only when a frame is complete (joining every 64 KiB piece onto the
   * rest would copy a 1 MiB frame some 16 times).
   */
  private parts: Buffer[] = [];
  private size = 0;
  private ended = false;
  private failure: Error | null = null;
  private wake: (() => void) | null = null;
  /** idleAfter(): the check, when next() last began to wait, when the peer's last bytes came, and the refusal once idle. */
  private idleTimer: NodeJS.Timeout | null = null;
  private waitingSince = 0;
  private lastData = 0;
  private idled: TsnapError | null = null;

  /** `maxFrame`: the largest frame accepted; raised once the peer is authenticated. */
  constructor(private readonly sock: Socket, public maxFrame = MAX_FRAME) {
    sock.on('data', (d: Buffer) => {
      if (this.idleTimer) this.lastData = Date.now();
      this.parts.push(d);
      this.size += d.length;
      if (this.size > this.maxFrame + FRAME_HEADER) sock.pause();
      this.wake?.();
    });
    sock.on('end', () => { this.ended = true; this.wake?.(); });
    sock.on('close', () => { this.ended = true; this.wake?.(); });
    sock.on('error', (e) => { this.failure = e; this.wake?.(); });
  }

  /**
   * From now on next() gives up with `gone()` once it has waited `ms` for
   * the peer without a byte arriving. A peer that stops sending without
   * closing (its host died, a partition: no FIN, no RST, and TCP keeps
   * such a connection open forever) is otherwise waited for forever. Only
   * time spent waiting for the peer counts: while this side is busy (its
   * reads paused by backpressure) the peer is not idle. stopIdle() ends it.
   */
  idleAfter(ms: number, gone: () => TsnapError): void {
    this.stopIdle();
    this.idled = null;
    if (!(ms > 0)) return;
    this.lastData = Date.now();
    this.idleTimer = setInterval(() => {
      if (this.wake === null) return;
      if (Date.now() - Math.max(this.waitingSince, this.lastData) < ms) return;
      this.idled = gone();
      this.wake();
    }, Math.max(10, Math.min(1000, ms / 4)));
    this.idleTimer.unref();
  }

  stopIdle(): void {
    if (this.idleTimer) clearInterval(this.idleTimer);
    this.idleTimer = null;
  }

  /** The next frame, or null at a clean end of stream between frames. */
  async next(): Promise<Frame | null> {
    for (;;) {
      if (this.idled) throw this.idled;
      if (this.size >= FRAME_HEADER) {
        const len = this.front(FRAME_HEADER).readUInt32LE(0);
        if (len > this.maxFrame) throw new TsnapError('badImage', `migration stream: frame of ${len} bytes is larger than allowed; not a tsnap peer or corrupted`);
        if (this.size >= FRAME_HEADER + len) {
          const whole = this.front(FRAME_HEADER + len);
          const type = whole.readUInt8(4) as Msg;
          const crc = whole.readUInt32LE(5);
          // A copy only when the frame shares a large socket buffer with others.
          const payload = whole.length > 2 * (FRAME_HEADER + len) ? Buffer.from(whole.subarray(FRAME_HEADER, FRAME_HEADER + len)) : whole.subarray(FRAME_HEADER, FRAME_HEADER + len);
          this.consume(FRAME_HEADER + len);
          if (this.size <= this.maxFrame) this.sock.resume();
          if (crc32(payload) !== crc) throw new TsnapError('badImage', `migration stream: ${Msg[type] ?? type} frame checksum mismatch`);
          return { type, payload };
        }
      }
      if (this.failure) throw connectionError(this.failure);
      if (this.ended) {
        if (this.size) throw new TsnapError('badImage', 'migration stream truncated in the middle of a frame');
        return null;
      }
      this.sock.resume();
      if (this.idleTimer) this.waitingSince = Date.now();
      await new Promise<void>((r) => { this.wake = r; });
      this.wake = null;
    }
  }

  /**
   * The reason of an ERROR frame that arrived unasked, if any: a receiver
   * that gives up says why while the sender is still writing.
   */
  bufferedError(): string | null {
    const buf = this.size ? this.front(this.size) : Buffer.alloc(0);
    for (let at = 0; at + FRAME_HEADER <= buf.length;) {
      const len = buf.readUInt32LE(at);
      if (len > this.maxFrame || at + FRAME_HEADER + len > buf.length) return null;
      if (buf.readUInt8(at + 4) === Msg.Error) {
        try {
          const e = packr.unpack(buf.subarray(at + FRAME_HEADER, at + FRAME_HEADER + len)) as { message?: unknown };
          return typeof e?.message === 'string' ? e.message : null;
        } catch {
          return null;
        }
      }
      at += FRAME_HEADER + len;
    }
    return null;
  }

  /** The first `n` bytes received (n <= size) in one buffer: the first part, or the parts it takes joined into one. */
  private front(n: number): Buffer {
    if (this.parts[0].length >= n) return this.parts[0];
    let k = 0;
    for (let got = 0; got < n; k++) got += this.parts[k].length;
    const joined = Buffer.concat(this.parts.slice(0, k));
    this.parts.splice(0, k, joined);
    return joined;
  }

  /** Drops the first `n` bytes (the front part holds them all: front(n) was called). */
  private consume(n: number): void {
    const first = this.parts[0];
    if (first.length === n) this.parts.shift();
    else this.parts[0] = first.subarray(n);
    this.size -= n;
  }

  /** The next frame, which must be of type `type` (an Error frame becomes a TsnapError). */
  async expect(type: Msg, what: string): Promise<Frame> {
    const f = await this.next();
    if (!f) throw new TsnapError('targetFailed', `migration peer closed the connection while ${what}`);
    if (f.type === Msg.Error) {
      const e = decodeDoc<{ code: string; message: string }>(f);
      throw new TsnapError(e.code === 'token' || e.code === 'version' ? 'permission' : 'targetFailed', `migration peer refused: ${e.message}`);
    }
    if (f.type !== type) throw new TsnapError('badImage', `migration stream: expected ${Msg[type]}, got ${Msg[f.type] ?? f.type} while ${what}`);
    return f;
  }
}

/** Writes frames, waiting for the socket to drain (backpressure). */
export async function send(sock: Socket, parts: Buffer[]): Promise<void> {
  for (const p of parts) {
    // A destroyed socket swallows writes without an 'error' event: check first.
    if (sock.destroyed || !sock.writable) throw new TsnapError('targetFailed', 'migration peer closed the connection');
    if (!sock.write(p)) {
      if (sock.destroyed) throw new TsnapError('targetFailed', 'migration peer closed the connection');
      await new Promise<void>((resolve, reject) => {
        const onDrain = () => { sock.off('error', onErr); sock.off('close', onClose); resolve(); };
        const onErr = (e: Error) => { sock.off('drain', onDrain); sock.off('close', onClose); reject(connectionError(e)); };
        const onClose = () => { sock.off('drain', onDrain); sock.off('error', onErr); reject(new TsnapError('targetFailed', 'migration peer closed the connection')); };
        sock.once('drain', onDrain);
        sock.once('error', onErr);
        sock.once('close', onClose);
      });
    }
  }
}

/** Errnos that only say the peer went away, whichever call (read, write, drain) noticed it first. */
const PEER_GONE = new Set(['EPIPE', 'ECONNRESET', 'ECONNABORTED']);

/** A socket error as users see it: a peer that went away reads the same whichever syscall saw it. */
export function connectionError(e: Error): TsnapError {
  const code = (e as NodeJS.ErrnoException).code;
  if (code && PEER_GONE.has(code)) return new TsnapError('targetFailed', 'migration peer closed the connection', e);
  return new TsnapError('targetFailed', `migration connection failed: ${e.message}`, e);
}

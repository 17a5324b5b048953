/**
 * Reading and writing another process's memory: process_vm_readv/writev for
 * bulk copies (one copy, no bounce page), /proc/PID/mem for pages the
 * mapping's protection hides (FOLL_FORCE reaches PROT_NONE and read-only data).
 */
import { openSync, closeSync } from 'node:fs';
import { libc } from './libc.js';
import { SysError } from './errors.js';
import { IOV_MAX, IOVEC_SIZE } from './uapi.js';

/** One remote range: address and length in bytes. */
export interface RemoteRange {
  addr: number;
  len: number;
}

/**
 * Scatter-gathers a list of remote ranges into consecutive bytes of `local`
 * starting at `localOffset`. Returns the bytes transferred; a short count
 * means the range containing byte `result` could not be read (the caller
 * falls back to /proc/PID/mem for it).
 *
 * One local iovec covers the whole destination, so the call count is
 * ceil(ranges / IOV_MAX) however fragmented the remote side is.
 */
export class VmCopier {
  private readonly remoteIov = Buffer.alloc(IOV_MAX * IOVEC_SIZE);
  private readonly localIov = Buffer.alloc(IOVEC_SIZE);

  constructor(readonly pid: number) {}

  readv(local: Buffer, localOffset: number, ranges: readonly RemoteRange[]): number {
    return this.transfer(false, local, localOffset, ranges);
  }

  writev(local: Buffer, localOffset: number, ranges: readonly RemoteRange[]): number {
    return this.transfer(true, local, localOffset, ranges);
  }

  /** process_vm_writev calls made (bench: a chain against one image). */
  static writeCalls = 0;
  private pieceIov: Buffer | null = null;

  /**
   * Writes pieces of `local` that are not back to back (a chunk whose runs
   * newer images of a chain interrupt) to their remote ranges, IOV_MAX
   * pieces per call: each piece is one local and one remote iovec. Returns
   * the bytes written; short means the piece holding byte `result` failed.
   */
  writePieces(local: Buffer, pieces: readonly { offset: number; addr: number; len: number }[]): number {
    const base = libc.address(local);
    const liov = (this.pieceIov ??= Buffer.alloc(IOV_MAX * IOVEC_SIZE));
    let done = 0;
    for (let i = 0; i < pieces.length; i += IOV_MAX) {
      const n = Math.min(IOV_MAX, pieces.length - i);
      let want = 0;
      for (let j = 0; j < n; j++) {
        const p = pieces[i + j];
        if (p.offset + p.len > local.length) throw new RangeError('local buffer too small');
        const o = j * IOVEC_SIZE;
        liov.writeBigUInt64LE(base + BigInt(p.offset), o);
        liov.writeUInt32LE(p.len % 0x100000000, o + 8);
        liov.writeUInt32LE(Math.floor(p.len / 0x100000000), o + 12);
        this.remoteIov.writeUInt32LE(p.addr % 0x100000000, o);
        this.remoteIov.writeUInt32LE(Math.floor(p.addr / 0x100000000), o + 4);
        this.remoteIov.writeUInt32LE(p.len % 0x100000000, o + 8);
        this.remoteIov.writeUInt32LE(Math.floor(p.len / 0x100000000), o + 12);
        want += p.len;
      }
      VmCopier.writeCalls++;
      const got = Number(libc.processVmWritev(this.pid, liov, n, this.remoteIov, n, 0));
      if (got === -1) {
        const e = libc.errno();
        if (e === 14) return done;
        throw new SysError(`process_vm_writev(${this.pid})`, e);
      }
      done += got;
      if (got < want) return done;
    }
    return done;
  }

  private transfer(write: boolean, local: Buffer, localOffset: number, ranges: readonly RemoteRange[]): number {
    const base = libc.address(local) + BigInt(localOffset);
    let done = 0;
    for (let i = 0; i < ranges.length; i += IOV_MAX) {
      const n = Math.min(IOV_MAX, ranges.length - i);
      let want = 0;
      const iov = this.remoteIov;
      for (let j = 0; j < n; j++) {
        const r = ranges[i + j];
        // Two 32-bit halves: a BigInt per field costs more than the copy of a page.
        const o = j * IOVEC_SIZE;
        iov.writeUInt32LE(r.addr % 0x100000000, o);
        iov.writeUInt32LE(Math.floor(r.addr / 0x100000000), o + 4);
        iov.writeUInt32LE(r.len % 0x100000000, o + 8);
        iov.writeUInt32LE(Math.floor(r.len / 0x100000000), o + 12);
        want += r.len;
      }
      if (localOffset + done + want > local.length) throw new RangeError('local buffer too small');
      this.localIov.writeBigUInt64LE(base + BigInt(done), 0);
      this.localIov.writeBigUInt64LE(BigInt(want), 8);
      if (write) VmCopier.writeCalls++;
      const fn = write ? libc.processVmWritev : libc.processVmReadv;
      const got = Number(fn(this.pid, this.localIov, 1, this.remoteIov, n, 0));
      if (got === -1) {
        const e = libc.errno();
        // EFAULT on the first remote iovec: nothing transferred in this batch.
        if (e === 14) return done;
        throw new SysError(`process_vm_${write ? 'writev' : 'readv'}(${this.pid})`, e);
      }
      done += got;
      if (got < want) return done;
    }
    return done;
  }
}

/**
 * Writes pieces of several local buffers into another process, in the
 * order added, as few process_vm_writev calls and as few remote iovecs as
 * possible: a piece that continues the previous one in the target extends
 * its remote iovec, one that continues it locally extends its local iovec.
 * The kernel pins the target's pages remote iovec by remote iovec (and
 * unpins each folio once per iovec that touches it), so a chain's pages
 * that come from different levels but lie side by side go in as one range,
 * as one image's would. Lists are sent when either side reaches IOV_MAX.
 */
export class GatherWriter {
  private readonly liov = Buffer.alloc(IOV_MAX * IOVEC_SIZE);
  private readonly riov = Buffer.alloc(IOV_MAX * IOVEC_SIZE);
  // 32-bit halves through typed arrays: no BigInt per field (addresses are below 2^47).
  private readonly l32 = new Uint32Array(this.liov.buffer, this.liov.byteOffset, IOV_MAX * 4);
  private readonly r32 = new Uint32Array(this.riov.buffer, this.riov.byteOffset, IOV_MAX * 4);
  private nl = 0;
  private nr = 0;
  /** End (local, remote) of the last iovec of each list, to extend it. */
  private lEnd = -1;
  private rEnd = -1;
  private want = 0;
  /** Remote address where a write stopped short, once one did. */
  private failed: number | null = null;
  /** Bytes written by calls already made. */
  written = 0;

  constructor(readonly pid: number) {}

  /** The address of a buffer's bytes, for `add` (one BigInt per buffer, not per piece). */
  static addressOf(buf: Buffer): number {
    return Number(libc.address(buf));
  }

  /** `len` bytes at `localAddr` (addressOf(buffer) + offset; the buffer kept alive by the caller) to `addr`. */
  add(localAddr: number, addr: number, len: number): void {
    if (this.failed !== null || len <= 0) return;
    const extendsL = localAddr === this.lEnd;
    const extendsR = addr === this.rEnd;
    if ((!extendsL && this.nl === IOV_MAX) || (!extendsR && this.nr === IOV_MAX)) {
      this.send();
      if (this.failed !== null) return;
      return this.add(localAddr, addr, len);
    }
    if (extendsL) {
      setLen(this.l32, this.nl - 1, getLen(this.l32, this.nl - 1) + len);
    } else {
      const o = this.nl++ * 4;
      this.l32[o] = localAddr % 0x100000000;
      this.l32[o + 1] = Math.floor(localAddr / 0x100000000);
      setLen(this.l32, this.nl - 1, len);
    }
    if (extendsR) {
      setLen(this.r32, this.nr - 1, getLen(this.r32, this.nr - 1) + len);
    } else {
      const o = this.nr++ * 4;
      this.r32[o] = addr % 0x100000000;
      this.r32[o + 1] = Math.floor(addr / 0x100000000);
      setLen(this.r32, this.nr - 1, len);
    }
    this.lEnd = localAddr + len;
    this.rEnd = addr + len;
    this.want += len;
  }

  /**
   * Sends what is queued. Returns null when every byte added so far was
   * written, else the target address where writing stopped (EFAULT: a
   * page that cannot be written there).
   */
  finish(): number | null {
    if (this.failed === null && this.nl > 0) this.send();
    return this.failed;
  }

  private send(): void {
    VmCopier.writeCalls++;
    const got = Number(libc.processVmWritev(this.pid, this.liov, this.nl, this.riov, this.nr, 0));
    if (got === -1) {
      const e = libc.errno();
      if (e !== 14) throw new SysError(`process_vm_writev(${this.pid})`, e);
    }
    const done = Math.max(got, 0);
    this.written += done;
    if (done < this.want) {
      // The remote iovec holding byte `done` is where it stopped.
      let at = 0;
      this.failed = this.r32[0] + this.r32[1] * 0x100000000;
      for (let i = 0; i < this.nr; i++) {
        const len = getLen(this.r32, i);
        if (at + len > done) { this.failed = this.r32[i * 4] + this.r32[i * 4 + 1] * 0x100000000 + (done - at); break; }
        at += len;
      }
    }
    this.nl = 0;
    this.nr = 0;
    this.lEnd = -1;
    this.rEnd = -1;
    this.want = 0;
  }
}

function getLen(v: Uint32Array, i: number): number {
  return v[i * 4 + 2] + v[i * 4 + 3] * 0x100000000;
}

function setLen(v: Uint32Array, i: number, len: number): void {
  v[i * 4 + 2] = len % 0x100000000;
  v[i * 4 + 3] = Math.floor(len / 0x100000000);
}

/**
 * /proc/PID/mem opened once. pread/pwrite there use FOLL_FORCE: they read
 * PROT_NONE pages that still hold data and write read-only pages.
 */
export class ProcMem {
  readonly fd: number;
  constructor(readonly pid: number, writable = false) {
    try {
      this.fd = openSync(`/proc/${pid}/mem`, writable ? 'r+' : 'r');
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new SysError(`open(/proc/${pid}/mem)`, Math.abs(e.errno ?? 5));
    }
  }

  read(buf: Buffer, bufOffset: number, len: number, addr: number): number {
    let done = 0;
    while (done < len) {
      const got = Number(libc.pread(this.fd, buf.subarray(bufOffset + done), len - done, addr + done));
      if (got === -1) throw new SysError(`pread(/proc/${this.pid}/mem, 0x${(addr + done).toString(16)})`, libc.errno());
      if (got === 0) throw new SysError(`pread(/proc/${this.pid}/mem, 0x${(addr + done).toString(16)})`, 5, 'unexpected end');
      done += got;
    }
    return done;
  }

  write(buf: Buffer, bufOffset: number, len: number, addr: number): void {
    let done = 0;
    while (done < len) {
      const put = Number(libc.pwrite(this.fd, buf.subarray(bufOffset + done), len - done, addr + done));
      if (put === -1 || put === 0) {
        throw new SysError(`pwrite(/proc/${this.pid}/mem, 0x${(addr + done).toString(16)})`, put === 0 ? 5 : libc.errno());
      }
      done += put;
    }
  }

  close(): void {
    closeSync(this.fd);
  }
}

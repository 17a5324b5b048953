/** Pure parts of aio rings, guard regions and the TCP peer test; the image rules for them. */
import { describe, it, expect } from 'vitest';
import { checkShape } from '../../src/image/shape.js';
import { VMAS } from '../../src/image/image-shapes.js';
import { requestsFor } from '../../src/files/aio.js';
import { peerOnThisHost } from '../../src/files/tcp.js';
import { isMappedGhost } from '../../src/files/ghost-map.js';
import { TsnapError } from '../../src/errors.js';

const vma = (start: number, end: number, extra: object = {}) => ({
  start, end, prot: 3, shared: false, pgoff: 0, path: '', special: null, file: null, dumped: true, ...extra,
});

function sockaddr4(ip: number[], port: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt16LE(2, 0);
  b.writeUInt16BE(port, 2);
  Buffer.from(ip).copy(b, 4);
  return b;
}

function sockaddr6(ip: number[], port: number): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt16LE(10, 0);
  b.writeUInt16BE(port, 2);
  Buffer.from(ip).copy(b, 8);
  return b;
}

describe('memory objects', () => {
  it('aio: the io_setup argument that makes a ring of the same size again', () => {
    // The kernel: max(n, 4 * CPUs) * 2 + 2 events, rounded up to whole pages.
    const ringLen = (n: number, cpus: number) => {
      const events = Math.max(n, 4 * cpus) * 2 + 2;
      return Math.ceil((32 + events * 32) / 4096) * 4096;
    };
    for (const cpus of [1, 2, 8]) {
      for (const n of [1, 32, 64, 127, 128, 1000, 65536]) {
        const len = ringLen(n, cpus);
        expect(ringLen(requestsFor(len), cpus), `n=${n} cpus=${cpus}`).toBe(len);
      }
    }
  });

  it('guard regions must be page ranges inside their VMA', () => {
    expect(() => checkShape(VMAS, [vma(0x1000, 0x5000, { guards: [[0x2000, 0x3000], [0x4000, 0x5000]] })], 'x')).not.toThrow();
    for (const g of [[0x0, 0x2000], [0x4000, 0x6000], [0x2000, 0x2800], [0x3000, 0x3000]]) {
      let caught: unknown;
      try { checkShape(VMAS, [vma(0x1000, 0x5000, { guards: [g] })], '/img/x'); } catch (e) { caught = e; }
      expect(caught).toBeInstanceOf(TsnapError);
      expect((caught as Error).message).toMatch(/guard region .* is not a page range inside it/);
    }
  });

  it('TCP: a peer is on this host when it is loopback or the connection\'s own address', () => {
    const here = sockaddr4([10, 0, 0, 5], 4000);
    expect(peerOnThisHost(here, sockaddr4([127, 0, 0, 1], 80))).toBe(true);
    expect(peerOnThisHost(here, sockaddr4([127, 1, 2, 3], 80))).toBe(true);
    expect(peerOnThisHost(here, sockaddr4([10, 0, 0, 5], 80))).toBe(true);
    expect(peerOnThisHost(here, sockaddr4([10, 0, 0, 6], 80))).toBe(false);
    const loop6 = [...Array(15).fill(0), 1];
    const mapped = [...Array(10).fill(0), 0xff, 0xff, 127, 0, 0, 1];
    const other6 = [0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 7];
    const v6 = sockaddr6(other6, 1);
    expect(peerOnThisHost(v6, sockaddr6(loop6, 80))).toBe(true);
    expect(peerOnThisHost(v6, sockaddr6(mapped, 80))).toBe(true);
    expect(peerOnThisHost(v6, sockaddr6(other6, 80))).toBe(true);
    expect(peerOnThisHost(v6, sockaddr6([...other6.slice(0, 15), 8], 80))).toBe(false);
  });

  it('mapped ghosts: deleted files only, not the kernel\'s own deleted objects', () => {
    const m = (path: string, extra: object = {}) => ({ start: 0, end: 4096, path, deleted: true, inode: 7, shared: true, ...extra });
    expect(isMappedGhost(m('/tmp/x'))).toBe(true);
    expect(isMappedGhost(m('/tmp/x', { deleted: false }))).toBe(false);
    expect(isMappedGhost(m('/dev/zero'))).toBe(false);
    expect(isMappedGhost(m('/memfd:a'))).toBe(false);
    expect(isMappedGhost(m('/[aio]'))).toBe(false);
    expect(isMappedGhost(m('/SYSV0000002a'))).toBe(false);
    expect(isMappedGhost(m('/anon_hugepage'))).toBe(false);
    expect(isMappedGhost(m('/tmp/x', { inode: 0 }))).toBe(false);
  });
});

/** vmFlagsOf (the scan in C, tsnap-procread.c) gives what the JavaScript parser gives, on real and made-up smaps text. */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { parseVmFlagsBuffer } from '../../src/proc/smaps.js';
import { vmFlagsOf } from '../../src/proc/smaps-reader.js';

const entries = (m: Map<number, string[]>) => [...m.entries()];

const area = (start: number, end: number, flags: string) =>
  `${start.toString(16)}-${end.toString(16)} rw-p 00000000 00:00 0 \nSize:                  4 kB\nRss:                   4 kB\nVmFlags:${flags}\n`;

describe('vmFlagsOf', () => {
  it('this process\'s smaps ([vsyscall] past 2^53 included)', () => {
    const buf = readFileSync(`/proc/${process.pid}/smaps`);
    const len = buf.length;
    const got = vmFlagsOf(buf, len);
    expect(entries(got)).toEqual(entries(parseVmFlagsBuffer(buf, len)));
    expect(got.size).toBeGreaterThan(10);
  });

  it('made-up areas: any flags, empty ones, repeated lines', () => {
    const token = fc.constantFrom('rd', 'wr', 'mr', 'mw', 'me', 'ac', 'dd', 'gd', 'hg', 'nh', 'lo', 'uw', 'sd');
    fc.assert(fc.property(fc.array(fc.array(token, { maxLength: 8 }), { maxLength: 60 }), (areas) => {
      const text = areas.map((f, i) => area(0x10000 + i * 0x2000, 0x11000 + i * 0x2000, f.length ? ` ${f.join(' ')} ` : '')).join('');
      const buf = Buffer.from(text, 'latin1');
      expect(entries(vmFlagsOf(buf, buf.length))).toEqual(entries(parseVmFlagsBuffer(buf, buf.length)));
    }));
  });

  it('a malformed header: the JavaScript parser\'s error', () => {
    const buf = Buffer.from(area(0x1000, 0x2000, ' rd wr') + 'zz-1 rw-p\nVmFlags: rd\n', 'latin1');
    expect(() => vmFlagsOf(buf, buf.length)).toThrow(/malformed smaps header/);
  });
});

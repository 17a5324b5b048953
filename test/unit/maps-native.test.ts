/** readMaps's parser in C (tsnap_maps_parse) gives what parseMaps gives, or leaves the text to it. */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { parseMaps, parseMapsBytes, readMaps } from '../../src/proc/maps.js';

const both = (text: string) => {
  const buf = Buffer.from(text, 'utf8');
  return { c: parseMapsBytes(buf, buf.length), js: parseMaps(text) };
};

describe('maps parsed in C', () => {
  it('this process\'s maps, and readMaps itself', () => {
    const text = readFileSync(`/proc/${process.pid}/maps`, 'utf8');
    const { c, js } = both(text);
    expect(c).toEqual(js);
    expect(c!.length).toBeGreaterThan(10);
    const live = readMaps(process.pid);
    expect(live.length).toBeGreaterThan(10);
    expect(live.some((v) => v.path === '[vsyscall]' && BigInt(v.start) === 0xffffffffff600000n)).toBe(true);
  });

  it('paths with spaces and UTF-8, deleted files, pseudo names, upper-case hex, no trailing space', () => {
    const text = [
      '7f0000001000-7f0000003000 r-xp 00002000 08:01 123456                     /tmp/my dir/lib with  space.so (deleted)',
      '7f0000003000-7f0000004000 rw-p 00000000 00:00 0 ',
      '7f0000004000-7f0000005000 rw-p 00000000 00:00 0',
      '7f0000005000-7f0000006000 rw-s 00000000 00:01 42                         /memfd:buf (deleted)',
      '7f0000006000-7f0000007000 r--p 00000000 00:00 0                          [anon:my region]',
      '7f0000007000-7f0000008000 r--p 00000000 00:00 7                          /tmp/é ü (deleted) x',
      '7f0000008000-7f0000009000 r--p 00000000 00:00 8                          (deleted)',
      '7F0000009000-7F000000A000 r--P 0000ABCD 0A:0b 9                          /x (deleted)',
      '1000000000000-1000000001000 ---p 1fffffffffffff00 103:0a 1844674407370955161 /dev/odd',
      'ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]',
      '',
      '',
    ].join('\n');
    const { c, js } = both(text);
    expect(c).toEqual(js);
    expect(c!.map((v) => v.deleted)).toEqual([true, false, false, true, false, false, false, true, false, false]);
  });

  it('leaves to parseMaps what it does not take: a bad line, more than 16 hex digits, a 20-digit inode', () => {
    for (const line of [
      'not a maps line',
      'zz-10 rw-p 0 00:00 0',
      '10-20 rw-p 0 00:00 x',
      '10-20 rw-p',
      '10000000000000000-10000000000001000 rw-p 0 00:00 0',
      '10-20 rw-p 0 00:00 18446744073709551615 /dev/odd',
    ]) {
      const buf = Buffer.from(`${line}\n`);
      expect(parseMapsBytes(buf, buf.length), line).toBeNull();
    }
  });

  it('made-up lines', () => {
    const hex = (max: number) => fc.integer({ min: 0, max }).map((n) => n.toString(16));
    const line = fc.record({
      start: hex(2 ** 47), len: hex(2 ** 30), perms: fc.constantFrom('rw-p', 'r--s', '---p', 'rwxs', 'r-xp'), off: hex(2 ** 40),
      maj: hex(0xfff), min: hex(0xfffff), ino: fc.integer({ min: 0, max: 2 ** 53 }),
      path: fc.oneof(fc.constant(''), fc.constant(' '), fc.string({ minLength: 1, maxLength: 40 }).map((s) => `   /${s.replace(/\n/g, '\\012')}`), fc.constant('   [heap]'), fc.constant('   /x (deleted)')),
    }).map((l) => `${l.start}-${(parseInt(l.start, 16) + parseInt(l.len, 16)).toString(16)} ${l.perms} ${l.off} ${l.maj}:${l.min} ${l.ino}${l.path}`);
    fc.assert(fc.property(fc.array(line, { maxLength: 40 }), (lines) => {
      const { c, js } = both(lines.join('\n') + '\n');
      expect(c).toEqual(js);
    }));
  });
});

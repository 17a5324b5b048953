/** Migration control messages are checked for shape before either side reads them. */
import { describe, it, expect } from 'vitest';
import { decodeDoc, Msg, type Frame } from '../../src/migrate/wire.js';
import { packr } from '../../src/image/metadata.js';
import { TsnapError } from '../../src/errors.js';

const frame = (type: Msg, doc: unknown): Frame => ({ type, payload: packr.pack(doc) });

function refused(f: Frame, re: RegExp): void {
  let caught: unknown;
  try { decodeDoc(f); } catch (e) { caught = e; }
  expect(caught).toBeInstanceOf(TsnapError);
  const e = caught as TsnapError;
  expect(e.kind).toBe('badImage');
  expect(e.message).not.toContain('\n');
  expect(e.message).toMatch(re);
}

describe('wire control messages', () => {
  it('well-formed messages pass, unknown fields included', () => {
    const hello = { magic: 'TSNAPWIRE', version: 1, token: 's3cret', pid: 1234, tool: 'tsnap', future: [1, 2] };
    expect(decodeDoc(frame(Msg.Hello, hello))).toEqual(hello);
    expect(decodeDoc(frame(Msg.FileEnd, { length: 5, crc32: 0xffffffff }))).toEqual({ length: 5, crc32: 0xffffffff });
    expect(decodeDoc(frame(Msg.IterBegin, { name: 'final' }))).toEqual({ name: 'final' });
    expect(decodeDoc(frame(Msg.Commit, {}))).toEqual({});
  });

  it('wrong types, ranges and missing fields are refused naming the message and the field', () => {
    refused(frame(Msg.Hello, { magic: 'TSNAPWIRE', version: 1, token: 42, pid: 1 }), /Hello message.*token: expected a string/);
    refused(frame(Msg.Hello, { magic: 'TSNAPWIRE', version: 1, token: 't', pid: -1 }), /pid: -1 is out of range/);
    refused(frame(Msg.Hello, { magic: 'TSNAPWIRE', version: 1, pid: 1 }), /token: missing/);
    refused(frame(Msg.FileBegin, { name: { path: 'x' } }), /FileBegin message.*name: expected a string/);
    refused(frame(Msg.FileEnd, { length: '5', crc32: 0 }), /length: expected an integer/);
    refused(frame(Msg.FileEnd, { length: 5, crc32: 2 ** 32 }), /crc32: .* out of range/);
    refused(frame(Msg.IterBegin, { name: '../etc' }), /name: .* not a valid value/);
    refused(frame(Msg.Committed, { dir: null }), /Committed message.*dir/);
    refused(frame(Msg.Restored, { pid: 5, restoreUs: Number.NaN }), /restoreUs: expected a finite number/);
    refused(frame(Msg.Error, ['token', 'wrong']), /Error message.*expected a map/);
    refused(frame(99 as Msg, 'x'), /99 message.*expected a map/);
  });

  it('an undecodable payload is refused', () => {
    refused({ type: Msg.Hello, payload: Buffer.from([0x92, 0x01]) }, /undecodable Hello message/);
  });
});

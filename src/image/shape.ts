/**
 * A small schema checker for decoded documents (image metadata, wire
 * messages). A CRC proves the bytes are the ones written, not that they are
 * a document this tsnap can use: a crafted or foreign file with valid CRCs
 * decodes to anything msgpack can say. Every decoded document goes through
 * a shape before any code reads it, so the code after it may trust types
 * and ranges.
 *
 * Unknown fields are allowed (a newer minor writer stays readable) and left
 * unchecked; only own properties of plain objects count, so a decoded
 * `__proto__` key cannot lend a document fields it does not have.
 */
import { TsnapError } from '../errors.js';

/** Throws ShapeError naming the path of the first offending value. */
export type Shape = (v: unknown, at: string) => void;

export class ShapeError extends Error {
  constructor(readonly at: string, readonly what: string) {
    super(`${at || 'document'}: ${what}`);
  }
}

const fail = (at: string, what: string): never => { throw new ShapeError(at, what); };

/**
 * Whether containers build the path of what they check. checkShape() checks
 * without (a restore reads documents of 10 000 VMAs: a path string per
 * field was most of the time) and only on a failure checks again with
 * paths, to name where. The shapes are pure: the second pass fails the same way.
 */
let paths = true;
const field = (at: string, k: string): string => (!paths ? at : at ? `${at}.${k}` : k);
const itemAt = (at: string, i: number): string => (paths ? `${at}[${i}]` : at);

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Buffer.isBuffer(v)) return 'binary';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'number') return String(v);
  if (typeof v === 'string') return 'a string';
  return typeof v === 'object' ? 'an object' : typeof v;
}

/** An integer in [min, max] (exact: NaN, fractions and infinities fail). */
export const int = (min: number, max: number): Shape => (v, at) => {
  if (typeof v !== 'number' || !Number.isInteger(v)) fail(at, `expected an integer, got ${describe(v)}`);
  if ((v as number) < min || (v as number) > max) fail(at, `${v} is out of range [${min}, ${max}]`);
};

/** A finite number in [min, max]. */
export const num = (min: number, max: number): Shape => (v, at) => {
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(at, `expected a finite number, got ${describe(v)}`);
  if ((v as number) < min || (v as number) > max) fail(at, `${v} is out of range [${min}, ${max}]`);
};

export const U32 = int(0, 0xffffffff);
export const I32 = int(-0x80000000, 0x7fffffff);
/** Non-negative integers that must stay exact as doubles. */
export const SAFE = int(0, Number.MAX_SAFE_INTEGER);

/** A BigInt in [min, max] (64-bit values: registers, masks, limits). */
export const big = (min = 0n, max = (1n << 64n) - 1n): Shape => (v, at) => {
  if (typeof v !== 'bigint') fail(at, `expected a 64-bit integer, got ${describe(v)}`);
  if ((v as bigint) < min || (v as bigint) > max) fail(at, `${v} is out of range`);
};
export const U64 = big();

export const bool: Shape = (v, at) => { if (typeof v !== 'boolean') fail(at, `expected a boolean, got ${describe(v)}`); };

/** A string of at most `max` characters, without NUL; optionally matching `re`. */
export const str = (max = 4096, re?: RegExp): Shape => (v, at) => {
  if (typeof v !== 'string') fail(at, `expected a string, got ${describe(v)}`);
  const s = v as string;
  if (s.length > max) fail(at, `string of ${s.length} characters, at most ${max} allowed`);
  if (s.includes('\0')) fail(at, 'string holds a NUL character');
  if (re && !re.test(s)) fail(at, `"${s.slice(0, 40)}" is not a valid value`);
};

/** One of the listed values. */
export const oneOf = (...values: readonly (string | number | boolean | null)[]): Shape => (v, at) => {
  if (!values.includes(v as string)) fail(at, `expected one of ${values.map((x) => JSON.stringify(x)).join(', ')}, got ${typeof v === 'string' ? JSON.stringify(v.slice(0, 40)) : describe(v)}`);
};

/** Binary data (msgpack bin) of a length in [min, max], a multiple of `unit`. */
export const bin = (min = 0, max = 1 << 30, unit = 1): Shape => (v, at) => {
  if (!Buffer.isBuffer(v)) fail(at, `expected binary data, got ${describe(v)}`);
  const n = (v as Buffer).length;
  if (n < min || n > max || n % unit !== 0) fail(at, `${n} bytes of binary data, expected ${min === max ? min : `${min}..${max}`}${unit > 1 ? ` in units of ${unit}` : ''}`);
};

export const nullable = (s: Shape): Shape => (v, at) => { if (v !== null) s(v, at); };

export const arr = (item: Shape, max = 1 << 24, min = 0): Shape => (v, at) => {
  if (!Array.isArray(v)) fail(at, `expected an array, got ${describe(v)}`);
  const a = v as unknown[];
  if (a.length < min || a.length > max) fail(at, `array of ${a.length} entries, expected ${min}..${max}`);
  for (let i = 0; i < a.length; i++) item(a[i], itemAt(at, i));
};

/** A fixed-length array, one shape per position. */
export const tuple = (...items: Shape[]): Shape => (v, at) => {
  if (!Array.isArray(v) || v.length !== items.length) fail(at, `expected an array of ${items.length} entries, got ${Array.isArray(v) ? `${v.length} entries` : describe(v)}`);
  // A loop, not forEach and a closure: a chain's pagemaps are tuples by the thousand, checked once per restore (cold code).
  const a = v as unknown[];
  for (let i = 0; i < items.length; i++) items[i](a[i], itemAt(at, i));
};

const OPTIONAL = Symbol('optional');
export type Field = Shape | { [OPTIONAL]: Shape };
/** A field that may be absent (absent and undefined are the same). */
export const opt = (s: Shape): Field => ({ [OPTIONAL]: s });

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v) || Buffer.isBuffer(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

export const obj = (fields: Record<string, Field>): Shape => {
  // Flat arrays, walked by index: a restore checks ~150 000 fields for 10 000 VMAs.
  const keys = Object.keys(fields);
  const shapes: Shape[] = keys.map((k) => { const f = fields[k]; return typeof f === 'function' ? f : f[OPTIONAL]; });
  const required: boolean[] = keys.map((k) => typeof fields[k] === 'function');
  const n = keys.length;
  return (v, at) => {
    if (!isPlainObject(v)) fail(at, `expected a map, got ${describe(v)}`);
    const o = v as Record<string, unknown>;
    for (let i = 0; i < n; i++) {
      const k = keys[i];
      const x = o[k];
      if (x === undefined || !Object.hasOwn(o, k)) {
        if (required[i]) fail(field(at, k), 'missing');
        continue;
      }
      shapes[i](x, field(at, k));
    }
  };
};

/** A map with arbitrary keys (up to `max`), every value of shape `value`. */
export const record = (value: Shape, max = 64): Shape => (v, at) => {
  if (!isPlainObject(v)) fail(at, `expected a map, got ${describe(v)}`);
  const keys = Object.keys(v as object);
  if (keys.length > max) fail(at, `map of ${keys.length} entries, at most ${max} allowed`);
  for (const k of keys) value((v as Record<string, unknown>)[k], field(at, k));
};

/** `s`, then a check across fields: `rule` returns what is wrong, or null. */
export const refine = <T>(s: Shape, rule: (v: T) => string | null): Shape => (v, at) => {
  s(v, at);
  const why = rule(v as T);
  if (why) fail(at, why);
};

/**
 * Checks `v` against `shape` and returns it typed; a mismatch is the
 * bad-image error (exit 7), one line naming `where` and the field.
 */
export function checkShape<T>(shape: Shape, v: unknown, where: string, advice = 'the image is damaged or was not written by tsnap'): T {
  try {
    paths = false;
    try {
      shape(v, '');
    } finally {
      paths = true;
    }
  } catch (err) {
    if (!(err instanceof ShapeError)) throw err;
    let failed: ShapeError = err;
    try {
      shape(v, '');
    } catch (named) {
      if (named instanceof ShapeError) failed = named;
    }
    // Keys and strings come from the document: keep the message one line.
    const what = failed.message.replace(/[\x00-\x1f\x7f]/g, '?');
    throw new TsnapError('badImage', `${where}: invalid metadata: ${what}; ${advice}`);
  }
  return v as T;
}

/**
 * Number scanning over a slice of a larger string. The maps parser calls these
 * several times per line on files that can hold 100k lines, so they read char
 * codes in place instead of allocating a substring per field.
 */

/** 13 hex digits = 52 bits: accumulating in a double stays exact up to there. */
const MAX_EXACT_HEX_DIGITS = 13;
/** 15 decimal digits < 2^53. */
const MAX_EXACT_DEC_DIGITS = 15;

function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48; // 0-9
  if (c >= 97 && c <= 102) return c - 87; // a-f
  if (c >= 65 && c <= 70) return c - 55; // A-F
  return -1;
}

/**
 * Hex in text[from, to). Returns NaN on an empty or non-hex slice so the caller
 * can name the line in its own error. Longer values go through BigInt so they
 * round once, to nearest, instead of accumulating error digit by digit.
 */
export function hexAt(text: string, from: number, to: number): number {
  if (to <= from) return NaN;
  if (to - from > MAX_EXACT_HEX_DIGITS) {
    for (let i = from; i < to; i++) if (hexDigit(text.charCodeAt(i)) < 0) return NaN;
    return Number(BigInt('0x' + text.slice(from, to)));
  }
  let v = 0;
  for (let i = from; i < to; i++) {
    const d = hexDigit(text.charCodeAt(i));
    if (d < 0) return NaN;
    v = v * 16 + d;
  }
  return v;
}

/** Unsigned decimal in text[from, to); NaN if empty or not all digits. */
export function decAt(text: string, from: number, to: number): number {
  if (to <= from) return NaN;
  let v = 0;
  for (let i = from; i < to; i++) {
    const c = text.charCodeAt(i) - 48;
    if (c < 0 || c > 9) return NaN;
    v = v * 10 + c;
  }
  // Beyond 2^53 the running product has rounded more than once; redo it with a
  // single correctly-rounded conversion.
  if (to - from > MAX_EXACT_DEC_DIGITS) return Number(text.slice(from, to));
  return v;
}

/** /proc prints masks (signals, capabilities) as 64-bit hex; they need every bit. */
export function hexToBigInt(s: string): bigint {
  if (!/^[0-9a-fA-F]+$/.test(s)) throw new Error(`not a hex number: ${JSON.stringify(s)}`);
  return BigInt('0x' + s);
}

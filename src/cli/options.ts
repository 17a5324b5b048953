/**
 * Option parsers and the options several commands share. A parser throws a
 * usage TsnapError naming the option, so bad text never reaches the library
 * as NaN (commander passes the raw string).
 */
import { Option, type Command } from 'commander';
import { TsnapError } from '../errors.js';

export type Codec = 'lz4' | 'none';

export function parseHostPort(v: string, defaultHost: string): { host: string; port: number } {
  const m = /^(?:\[?([^\]]*)\]?:)?(\d+)$/.exec(v) ?? /^([^:]+)$/.exec(v);
  if (!m) throw new TsnapError('usage', `expected HOST:PORT, got "${v}"`);
  if (m.length === 2) return { host: m[1], port: 7707 };
  const port = Number(m[2]);
  // 0: any free port (serve --listen HOST:0).
  if (port > 65535) throw new TsnapError('usage', `port must be from 0 to 65535, got ${m[2]}`);
  return { host: m[1] || defaultHost, port };
}

export function parseRate(v: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?B)?(?:\/s)?$/.exec(v);
  if (!m) throw new TsnapError('usage', `bad rate "${v}" (e.g. 50M, 1G)`);
  const mult = { '': 1, k: 1e3, m: 1e6, g: 1e9 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * mult;
}

/** A size in bytes, with an optional binary suffix (K, M, G: KiB, MiB, GiB), as CRIU's --ghost-limit. */
export function parseSize(v: string): number {
  const m = /^(\d+)\s*([kKmMgG]?)(?:i?B)?$/.exec(v);
  if (!m) throw new TsnapError('usage', `bad size "${v}" (e.g. 64M, 1G, 4096)`);
  return Number(m[1]) * { '': 1, k: 1024, m: 1 << 20, g: 1 << 30 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
}

export function parseSeconds(v: string): number {
  const n = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || !(n > 0)) throw new TsnapError('usage', `expected a number of seconds above 0, got "${v}"`);
  return n;
}

/** An integer option within [min, max]. */
export function intOption(name: string, min: number, max = Number.MAX_SAFE_INTEGER): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < min || n > max) throw new TsnapError('usage', `${name} must be a whole number ${max === Number.MAX_SAFE_INTEGER ? `of at least ${min}` : `from ${min} to ${max}`}, got "${v}"`);
    return n;
  };
}

export function parsePid(v: string): number {
  if (!/^\d+$/.test(v)) throw new TsnapError('usage', `--pid must be a number, got "${v}"`);
  return Number(v);
}

/** -p/--pid; `required` makes commander refuse the command without it. */
export function pidOption(description: string, required = true): Option {
  return new Option('-p, --pid <pid>', description).argParser(parsePid).makeOptionMandatory(required);
}

/** --compress lz4|none; without a default (squash) the source image's codec is kept. */
export function compressOption(description = 'page compression', withDefault = true): Option {
  const o = new Option('--compress <codec>', description).choices(['lz4', 'none']);
  return withDefault ? o.default('none') : o;
}

export function jsonOption(description = 'print the result as JSON'): Option {
  return new Option('--json', description);
}

/** --token and --token-file (read by token.ts), as serve and migrate take them. */
export function addTokenOptions(cmd: Command, secretDescription: string): Command {
  return cmd
    .option('--token <secret>', secretDescription)
    .option('--token-file <file>', 'read the shared secret from a file');
}

/**
 * Image fuzzing on real images: a small process (test/fixtures/fuzzee.c,
 * which sums its own memory) is dumped — a full image, a second full dump
 * of the same process, two incremental chains, and twice as a tree with a
 * child of its own — and each mutation
 * (bit flips, truncation, zeroing, garbage, appended bytes, deleted files,
 * files swapped in from another dump / another chain / another level,
 * crafted metadata re-sealed with valid CRCs, crafted headers) is applied
 * to a fresh copy. Then:
 *   - verify and show, in this process: succeed, or throw the bad-image
 *     error with a one-line message (nothing else, no crash);
 *   - restore (the library's, in this process): the restored process
 *     reports the exact sum of the memory it was dumped with, or the
 *     bad-image error with a one-line message; it refuses exactly the
 *     images verify refuses; no process is left behind;
 *   - for a sample (every TSNAP_FUZZ_CLI_EVERY-th, default 20th), restore,
 *     verify and show through the CLI too: exit 0 (with the exact memory),
 *     or exit 7 with exactly one line on stderr; never a hang or a crash.
 *
 * TSNAP_FUZZ_MUTATIONS (default 240) and TSNAP_FUZZ_SEED choose the run;
 * scripts/fuzz-images.sh runs 1000+.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, execFileSync } from 'node:child_process';
import { cpSync, readFileSync, writeFileSync, rmSync, truncateSync, statSync, readdirSync, readlinkSync, appendFileSync, existsSync, openSync, closeSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { rng } from './helpers/rng.js';
import { ownerOf, runId } from './helpers/processes.js';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running } from './helpers/fixtures.js';
import { tsnap, startTsnap, TSNAP_BIN, killPid, type CliResult } from './helpers/tsnap.js';
import { verify } from '../src/image/verify.js';
import { restore } from '../src/restore/restore.js';
import { showImage } from '../src/cli/show.js';
import { packr, readMetaFile, writeMetaFile } from '../src/image/metadata.js';
import { encodeHeader } from '../src/image/header.js';
import { crc32 } from '../src/image/checksum.js';
import { TsnapError } from '../src/errors.js';
import { HEADER_SIZE, FileKind } from '../formats/schema.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const MUTATIONS = Number(process.env.TSNAP_FUZZ_MUTATIONS ?? 240);
const SEED = Number(process.env.TSNAP_FUZZ_SEED ?? 0x5eed);
/** Every how many mutations verify and show also run through the CLI. */
const CLI_SAMPLE = Number(process.env.TSNAP_FUZZ_CLI_EVERY ?? 20);
const RESTORE_TIMEOUT_MS = 30_000;

interface Subject {
  name: string;
  /** Directory holding the subject (copied whole for each mutation). */
  root: string;
  /** The image to restore, relative to root. */
  top: string;
  /** Every file of the subject, and its metadata files (all but pages), relative to root. */
  files: string[];
  meta: string[];
  /** The sum the restored process reports: "<hex>", or "<parent hex>-<child hex>" for the tree. */
  sum: string;
  /** Same-named files (or directories) that may be swapped in: [relative path in subject, absolute source]. */
  swaps: [string, string][];
}

const FILES = ['inventory', 'process', 'pagemap', 'stats', 'pages'];

/** Files under `root`, relative to it. */
function walk(root: string, rel = ''): string[] {
  return readdirSync(join(root, rel), { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(root, join(rel, e.name)) : [join(rel, e.name)]));
}

function subject(name: string, root: string, top: string, sum: string, swaps: [string, string][]): Subject {
  const files = walk(root);
  return { name, root, top, sum, swaps, files, meta: files.filter((f) => !/(^|\/)pages(\.1)?$/.test(f)) };
}

let fuzzee = '';
let work = '';
let subjects: Subject[] = [];

async function cmd(p: Running, line: string, reply: RegExp): Promise<string> {
  const n = p.lines().length;
  p.writeLine(line);
  return p.waitForLine(reply, 10_000, n);
}

async function ok(...args: string[]): Promise<void> {
  const r = await tsnap(...args);
  expect(r.code, r.stderr).toBe(0);
}

/**
 * Restores under way or restored processes not yet killed, by both workers:
 * a process of the other worker is not one left behind.
 */
let inFlight = 0;

/**
 * Pids of live processes running the fuzzee binary: only this file's restores run it, in this run.
 * The binary is shared by every run through the fixture cache, so a process marked by another run
 * (scripts/fuzz-images.sh beside the suite) is not ours; one with no readable marker (a half-built
 * restore whose environment is not filled yet) is counted.
 */
function fuzzeeProcesses(): number[] {
  const thisRun = `${runId()}.`;
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readlinkSync(`/proc/${name}/exe`) !== fuzzee || /^State:\s+[ZX]/m.test(readFileSync(`/proc/${name}/status`, 'utf8'))) continue;
      const owner = ownerOf(Number(name));
      if (owner === null || owner.startsWith(thisRun)) out.push(Number(name));
    } catch { /* gone, or a kernel thread */ }
  }
  return out;
}

beforeAll(async () => {
  fuzzee = await compileC('fuzzee');
  work = tmpDir('tsnap-fuzz-');
  const p = await startProcess(fuzzee, []);
  const pid = String(p.pid);
  const sumF = p.readyInfo.sum;
  await ok('dump', '--pid', pid, '--dir', join(work, 'full'), '--leave-running', '--compress', 'lz4');
  // Format 2: the one-copy dump's page data over pages and pages.1 (forced: the fuzzee is under the 64 MiB floor).
  const split = async (dir: string) => {
    const r = await startTsnap(['dump', '--pid', pid, '--dir', dir, '--leave-running', '--no-cow'], { TSNAP_SPLICE: 'always', TSNAP_SPLICE_FILES: '2' }).done;
    expect(r.code, r.stderr).toBe(0);
    expect(existsSync(join(dir, 'pages.1')), dir).toBe(true);
  };
  await split(join(work, 'split'));
  const sumG = (await cmd(p, 'mutate 2', /^DONE/)).split(' ')[1];
  await ok('dump', '--pid', pid, '--dir', join(work, 'full2'), '--leave-running', '--compress', 'lz4');
  await split(join(work, 'split2'));
  const chains: Record<string, string> = {};
  for (const [name, g] of [['A', 3], ['B', 5]] as const) {
    await cmd(p, `mutate ${g}`, /^DONE/);
    await ok('pre-dump', '--pid', pid, '--dir', join(work, name, '1'), '--compress', 'lz4');
    chains[name] = (await cmd(p, `mutate ${g + 1}`, /^DONE/)).split(' ')[1];
    await ok('dump', '--pid', pid, '--dir', join(work, name, '2'), '--parent', join(work, name, '1'), '--leave-running', '--compress', 'lz4');
  }
  await p.kill();
  expect(sumG).not.toBe(sumF);
  // A tree: the fuzzee and a child of its own, dumped twice.
  const t = await startProcess(fuzzee, ['fork']);
  const kids = [Number(t.readyInfo.child)];
  let sumT = '';
  try {
    sumT = t.readyInfo.sum;
    await ok('dump', '--pid', String(t.pid), '--dir', join(work, 'T', '1'), '--tree', '--leave-running');
    await cmd(t, 'mutate 9', /^DONE/);
    await ok('dump', '--pid', String(t.pid), '--dir', join(work, 'T', '2'), '--tree', '--leave-running');
  } finally {
    await t.kill();
    for (const k of kids) await killPid(k);
  }
  const fileSwaps = (rel: string, from: string, names: string[]): [string, string][] => names.map((n) => [join(rel, n), join(from, n)]);
  const tp = String(t.pid);
  const tc = String(kids[0]);
  subjects = [
    // Another dump of the same process.
    subject('full', join(work, 'full'), '.', sumF, fileSwaps('.', join(work, 'full2'), FILES)),
    // Two pages files (format 2): the files of another split dump, and one-file dumps' pages and index.
    subject('split', join(work, 'split'), '.', sumF, [...fileSwaps('.', join(work, 'split2'), [...FILES, 'pages.1']), ...fileSwaps('.', join(work, 'full2'), ['pages', 'pagemap', 'inventory'])]),
    subject('chain', join(work, 'A'), '2', chains.A, [
      // The same level of another chain of the same process.
      ...fileSwaps('1', join(work, 'B', '1'), ['inventory', 'pagemap', 'pages', 'stats']),
      ...fileSwaps('2', join(work, 'B', '2'), FILES),
      // Another level of the same chain.
      ...fileSwaps('2', join(work, 'A', '1'), ['inventory', 'pagemap', 'pages', 'stats']),
      // A whole parent directory from the other chain.
      ['1', join(work, 'B', '1')],
    ]),
    // Members (directories and files) and the manifest from another dump of the same tree.
    subject('tree', join(work, 'T', '1'), '.', sumT, [
      ...fileSwaps(tp, join(work, 'T', '2', tp), FILES), ...fileSwaps(tc, join(work, 'T', '2', tc), FILES),
      [tp, join(work, 'T', '2', tp)], [tc, join(work, 'T', '2', tc)], ['tree', join(work, 'T', '2', 'tree')],
    ]),
  ];
}, 120_000);

// ---------------------------------------------------------------------------
// Mutations. Each returns a description; `dir` is a fresh copy of the subject.

type Mutator = (dir: string, s: Subject, r: () => number) => string;

const pick = <T>(r: () => number, items: readonly T[]): T => items[Math.floor(r() * items.length)];

/** A file of the subject, the big pages files weighted like the small ones. */
const anyFile = (_dir: string, s: Subject, r: () => number): string => pick(r, s.files);
const metaFile = (_dir: string, s: Subject, r: () => number): string => pick(r, s.meta);

/** A random offset, half of the time inside the 32-byte header. */
const offsetIn = (size: number, r: () => number) => (r() < 0.3 ? Math.floor(r() * Math.min(size, HEADER_SIZE)) : Math.floor(r() * size));

function sealed(payload: Buffer, kind: number): Buffer {
  return Buffer.concat([encodeHeader({ version: 1, kind, flags: 0, payloadLength: payload.length, payloadCrc: crc32(payload) }), payload]);
}

/** Rewrites a metadata file with `payload`, valid CRCs, and (when `record`) its inventory entry to match. */
function reseal(dir: string, rel: string, payload: Buffer, record: boolean): void {
  const path = join(dir, rel);
  const kind = readFileSync(path).readUInt16LE(10);
  writeFileSync(path, sealed(payload, kind));
  const name = rel.split('/').pop()!;
  if (!record || name === 'inventory' || name === 'tree') return;
  const invPath = join(dir, rel.slice(0, rel.length - name.length), 'inventory');
  const inv = packr.unpack(readFileSync(invPath).subarray(HEADER_SIZE)) as { files: Record<string, { length: number; crc32: number }> };
  inv.files[name] = { length: payload.length, crc32: crc32(payload) };
  writeFileSync(invPath, sealed(packr.pack(inv), 1));
}

/** Every path inside a decoded document (objects and arrays, not Buffers). */
function paths(v: unknown, at: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  if (at.length) out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => paths(x, [...at, i], out));
  else if (v && typeof v === 'object' && !Buffer.isBuffer(v)) for (const k of Object.keys(v)) paths((v as Record<string, unknown>)[k], [...at, k], out);
  return out;
}

/**
 * A value the shape of this place cannot accept: another type, or a number
 * no field allows (NaN, infinities, 2^64, a fraction of an integer). Only
 * values a real image can never hold: a crafted but consistent image (a
 * run dropped, a register changed, all CRCs recomputed) is just another image.
 */
function wrongValue(old: unknown, r: () => number): unknown {
  if (typeof old === 'number') return pick(r, [Number.NaN, Number.NEGATIVE_INFINITY, 2 ** 64, Number.isInteger(old) ? old + 0.5 : Number.NaN, 'x', 5n, null, [], {}]);
  if (typeof old === 'bigint') return pick(r, [-1n, 1, 'x', null, Buffer.alloc(8)]);
  if (typeof old === 'string') return pick(r, [42, 'x'.repeat(5000), 'a\0b', null, Buffer.from('x'), []]);
  if (typeof old === 'boolean') return pick(r, [1, 'true', null, 0n]);
  if (Buffer.isBuffer(old)) return pick(r, [Buffer.alloc(old.length + 1), Buffer.alloc(old.length ? old.length - 1 : 1), 'buf', 0, null]);
  if (old === null) return pick(r, [0, 'x', {}, [], Buffer.alloc(1), 1n]);
  if (Array.isArray(old)) return pick(r, [{}, 'x', 0, 1n]);
  return pick(r, [[], 'x', 0, Buffer.alloc(1)]);
}


/** One value of a metadata document made wrong (or a field deleted), sealed with valid CRCs. */
function craft(dir: string, rel: string, r: () => number, where: (at: (string | number)[]) => boolean): string {
  const doc = packr.unpack(readFileSync(join(dir, rel)).subarray(HEADER_SIZE)) as Record<string, unknown>;
  const all = paths(doc).filter(where);
  const at = all.length ? pick(r, all) : pick(r, paths(doc));
  let holder: Record<string | number, unknown> = doc;
  for (const k of at.slice(0, -1)) holder = holder[k] as Record<string | number, unknown>;
  const key = at[at.length - 1];
  const old = holder[key];
  let what: string;
  // Deleting a field: fine when it is optional, refused when required.
  if (!Array.isArray(holder) && r() < 0.15) { delete holder[key]; what = 'deleted'; }
  else { holder[key] = wrongValue(old, r); what = `set to ${typeof holder[key] === 'string' ? `"${(holder[key] as string).slice(0, 8)}"` : Buffer.isBuffer(holder[key]) ? `binary(${(holder[key] as Buffer).length})` : String(holder[key])}`; }
  const record = r() < 0.7;
  reseal(dir, rel, packr.pack(doc), record);
  return `${rel}: ${at.join('.')} ${what} (valid CRCs${record ? ', inventory updated' : ''})`;
}

const mutators: Record<string, Mutator> = {
  bitflip: (dir, s, r) => {
    const rel = anyFile(dir, s, r);
    const b = readFileSync(join(dir, rel));
    const n = 1 + Math.floor(r() * 8);
    for (let i = 0; i < n; i++) { const o = offsetIn(b.length, r); b[o] ^= 1 << Math.floor(r() * 8); }
    writeFileSync(join(dir, rel), b);
    return `${n} bits flipped in ${rel}`;
  },
  truncate: (dir, s, r) => {
    const rel = anyFile(dir, s, r);
    const size = statSync(join(dir, rel)).size;
    const to = r() < 0.3 ? Math.floor(r() * Math.min(size, HEADER_SIZE + 8)) : Math.floor(r() * size);
    truncateSync(join(dir, rel), to);
    return `${rel} truncated to ${to} of ${size}`;
  },
  zero: (dir, s, r) => {
    const rel = anyFile(dir, s, r);
    const b = readFileSync(join(dir, rel));
    const o = offsetIn(b.length, r);
    const len = 1 + Math.floor(r() * 4096);
    b.fill(0, o, Math.min(b.length, o + len));
    writeFileSync(join(dir, rel), b);
    return `${len} bytes zeroed at ${o} of ${rel}`;
  },
  garbage: (dir, s, r) => {
    const rel = anyFile(dir, s, r);
    const b = readFileSync(join(dir, rel));
    const o = offsetIn(b.length, r);
    const len = 1 + Math.floor(r() * 512);
    for (let i = o; i < Math.min(b.length, o + len); i++) b[i] = Math.floor(r() * 256);
    writeFileSync(join(dir, rel), b);
    return `${len} bytes of garbage at ${o} of ${rel}`;
  },
  append: (dir, s, r) => {
    const rel = anyFile(dir, s, r);
    const len = 1 + Math.floor(r() * 64);
    appendFileSync(join(dir, rel), Buffer.from(Array.from({ length: len }, () => Math.floor(r() * 256))));
    return `${len} bytes appended to ${rel}`;
  },
  delete: (dir, s, r) => {
    const rel = anyFile(dir, s, r);
    rmSync(join(dir, rel));
    return `${rel} deleted`;
  },
  swap: (dir, s, r) => {
    const [rel, from] = pick(r, s.swaps);
    rmSync(join(dir, rel), { recursive: true, force: true });
    cpSync(from, join(dir, rel), { recursive: true });
    return `${rel} replaced by ${from}`;
  },
  crafted: (dir, s, r) => craft(dir, metaFile(dir, s, r), r, () => true),
  /** The same, aimed at what places memory: the page index, the layout, the threads. */
  craftedIndex: (dir, s, r) => {
    const rel = pick(r, s.meta.filter((f) => /(^|\/)(pagemap|process)$/.test(f)));
    return craft(dir, rel, r, (at) => ['chunks', 'runs', 'vmas', 'mm', 'threads'].includes(String(at[0])));
  },
  /** Decoded and sealed again unchanged: a control, which must restore exactly. */
  resealed: (dir, s, r) => {
    const rel = metaFile(dir, s, r);
    reseal(dir, rel, packr.pack(packr.unpack(readFileSync(join(dir, rel)).subarray(HEADER_SIZE))), true);
    return `${rel} decoded and sealed again unchanged`;
  },
  parentPath: (dir, s, r) => {
    // The case reported: a crafted parent.path that is not a string.
    const rel = pick(r, s.meta.filter((f) => /(^|\/)inventory$/.test(f)));
    const doc = packr.unpack(readFileSync(join(dir, rel)).subarray(HEADER_SIZE)) as { parent: unknown };
    const v = pick(r, [42, null, { a: 1 }, ['../1'], Buffer.from('../1'), '']);
    doc.parent = doc.parent && typeof doc.parent === 'object' ? { ...(doc.parent as object), path: v } : { path: v, imageId: 'x' };
    reseal(dir, rel, packr.pack(doc), true);
    return `${rel}: parent.path set to ${JSON.stringify(v)} (valid CRCs)`;
  },
  garbageDoc: (dir, s, r) => {
    const rel = metaFile(dir, s, r);
    const len = 1 + Math.floor(r() * 64);
    const bytes = Buffer.from(Array.from({ length: len }, () => Math.floor(r() * 256)));
    reseal(dir, rel, bytes, true);
    return `${rel}: ${len} random bytes as its document (valid CRCs)`;
  },
  header: (dir, s, r) => {
    const rel = anyFile(dir, s, r);
    const b = readFileSync(join(dir, rel));
    if (b.length < HEADER_SIZE) return `${rel} left alone`;
    const field = pick(r, ['flags', 'version', 'kind', 'length'] as const);
    if (field === 'flags') b.writeUInt32LE(1 << Math.floor(r() * 32) >>> 0, 12);
    else if (field === 'version') b.writeUInt16LE(pick(r, [0, 2, 0xffff]), 8);
    else if (field === 'kind') b.writeUInt16LE(1 + ((b.readUInt16LE(10) + Math.floor(r() * 5)) % 6), 10);
    else b.writeBigUInt64LE(b.readBigUInt64LE(16) + BigInt(pick(r, [1, -1, 4096, 2 ** 40])) & ((1n << 64n) - 1n), 16);
    b.writeUInt32LE(crc32(b.subarray(0, 28)), 28);
    writeFileSync(join(dir, rel), b);
    return `${rel}: header ${field} changed (header CRC valid)`;
  },
};

const WEIGHTS: [string, number][] = [
  ['bitflip', 16], ['truncate', 8], ['zero', 8], ['garbage', 10], ['append', 4], ['delete', 5],
  ['swap', 12], ['crafted', 16], ['craftedIndex', 10], ['resealed', 3], ['parentPath', 2], ['garbageDoc', 5], ['header', 6],
];
const TOTAL_WEIGHT = WEIGHTS.reduce((n, [, w]) => n + w, 0);

function pickMutator(r: () => number): string {
  let x = r() * TOTAL_WEIGHT;
  for (const [name, w] of WEIGHTS) { x -= w; if (x < 0) return name; }
  return WEIGHTS[0][0];
}

// ---------------------------------------------------------------------------
// Running tsnap on a mutated copy.

type Outcome = { ok: true } | { ok: false; message: string };

/** verify or show in this process: success, or a one-line bad-image error; anything else throws. */
function inProcess(f: () => unknown): Outcome {
  try {
    f();
    return { ok: true };
  } catch (err) {
    if (!(err instanceof TsnapError) || err.kind !== 'badImage') throw new Error(`not a bad-image error: ${(err as Error)?.stack ?? err}`);
    if (err.message.includes('\n')) throw new Error(`a message of several lines: ${err.message}`);
    return { ok: false, message: err.message };
  }
}

/** A CLI run that failed must be exit 7 with exactly one line on stderr. */
function expectRefusal(what: string, r: CliResult, desc: string): void {
  const lines = r.stderr.split('\n').filter((l) => l.length > 0);
  expect({ code: r.code, signal: r.signal }, `${what} after ${desc}: ${r.stderr}`).toEqual({ code: 7, signal: null });
  expect(lines, `${what} after ${desc}`).toHaveLength(1);
  expect(lines[0]).toMatch(/^tsnap: /);
}

function withTimeout(args: string[], stdin: 'ignore' | import('node:stream').Readable = 'ignore'): { done: Promise<CliResult & { timedOut: boolean; lines: string[] }>; } {
  const child = spawn(process.execPath, [TSNAP_BIN, ...args], { stdio: [stdin, 'pipe', 'pipe'] });
  let stderr = '';
  const lines: string[] = [];
  child.stderr!.on('data', (d) => { stderr += d; });
  createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
  let timedOut = false;
  const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, RESTORE_TIMEOUT_MS);
  const stderrEnd = new Promise<void>((resolve) => child.stderr!.on('end', resolve));
  const done = new Promise<CliResult & { timedOut: boolean; lines: string[] }>((resolve) => {
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      // A restored process keeps the pipes open: only a failed run's stderr is complete at its end.
      const complete = code === 0 ? Promise.resolve() : stderrEnd;
      void complete.then(() => resolve({ code, signal, stdout: '', stderr, timedOut, lines }));
    });
  });
  return { done };
}

/**
 * `tsnap restore --new-pid --detach`; on success asks the restored process
 * for the sum of its memory. Returns the sum (null when refused) and the CLI result.
 */
async function restoreAndSum(dir: string): Promise<{ r: CliResult & { timedOut: boolean }; sum: string | null }> {
  const feeder = spawn('cat', [], { stdio: ['pipe', 'pipe', 'ignore'] });
  const pidfile = join(dir, '..', `${dir.split('/').pop()}.pid`);
  inFlight++;
  const { done } = withTimeout(['restore', '--dir', dir, '--new-pid', '--detach', '--pidfile', pidfile], feeder.stdout!);
  const r = await done;
  try {
    if (r.code !== 0) return { r, sum: null };
    const pid = Number(readFileSync(pidfile, 'utf8'));
    // A tree's children too (the pidfile names its root).
    const pids = [pid, ...readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ').filter(Boolean).map(Number)];
    try {
      feeder.stdin!.write('sum\n');
      for (let i = 0; i < 500 && !r.lines.some((l) => l.startsWith('SUM ')); i++) await new Promise((res) => setTimeout(res, 20));
      const line = r.lines.find((l) => l.startsWith('SUM '));
      return { r, sum: line ? line.slice(4) : `(no answer; output: ${r.lines.join(' | ')})` };
    } finally {
      for (const p of pids) await killPid(p);
    }
  } finally {
    feeder.kill('SIGKILL');
    inFlight--;
  }
}

/**
 * The library's restore, in this process (what `tsnap restore --detach`
 * runs, without the cost of starting Node): the restored process reads a
 * FIFO and writes a file, and is asked for its sum.
 */
async function restoreInProcess(dir: string, base: string): Promise<Outcome & { sum?: string }> {
  const fifo = join(base, 'stdin');
  const outFile = join(base, 'stdout');
  execFileSync('mkfifo', ['-m', '600', fifo]);
  // Held open for writing, so that the restore's open for reading does not block.
  const feed = openSync(fifo, 'r+');
  inFlight++;
  try {
    let pids: number[];
    try {
      pids = (await restore({ dir, newPid: true, stdin: fifo, stdout: outFile, stderr: join(base, 'stderr') })).pids.map((p) => p.pid);
    } catch (err) {
      return inProcess(() => { throw err; });
    }
    try {
      writeSync(feed, 'sum\n');
      let line: string | undefined;
      for (let i = 0; i < 500 && !line; i++) {
        await new Promise((res) => setTimeout(res, 10));
        line = readFileSync(outFile, 'utf8').split('\n').find((l) => l.startsWith('SUM '));
      }
      return { ok: true, sum: line ? line.slice(4) : `(no answer: ${readFileSync(outFile, 'utf8')})` };
    } finally {
      for (const pid of pids) await killPid(pid);
    }
  } finally {
    closeSync(feed);
    inFlight--;
  }
}

interface Tally { runs: number; refused: number; restored: number; cliRuns: number; byKind: Record<string, { runs: number; refused: number }> }

async function runOne(i: number, tally: Tally): Promise<void> {
  const r = rng(SEED + i * 7919);
  const s = subjects[i % subjects.length];
  const kind = pickMutator(r);
  const base = tmpDir('tsnap-fuzz-m-');
  const dir = join(base, 'img');
  cpSync(s.root, dir, { recursive: true });
  const desc = `mutation ${i} (seed ${SEED}, ${s.name}): ${mutators[kind](dir, s, r)}`;
  const top = join(dir, s.top);
  try {
    const v = inProcess(() => verify(top));
    inProcess(() => showImage(top, false));
    inProcess(() => showImage(top, true));
    const lib = await restoreInProcess(top, base);
    if (v.ok) {
      // verify found nothing wrong: the restore must bring back the exact memory.
      expect({ desc, lib }).toEqual({ desc, lib: { ok: true, sum: s.sum } });
      tally.restored++;
    } else {
      // restore refuses what verify refuses.
      expect({ desc, verify: v.message, ok: lib.ok }).toEqual({ desc, verify: v.message, ok: false });
      tally.refused++;
      (tally.byKind[kind] ??= { runs: 0, refused: 0 }).refused++;
    }
    if (i % CLI_SAMPLE === 0) {
      tally.cliRuns++;
      const { r: res, sum } = await restoreAndSum(top);
      expect(res.timedOut, `restore hung after ${desc}`).toBe(false);
      // Warnings only (a tree under new pids is told its pids are stale).
      const errors = res.stderr.split('\n').filter((l) => l && !l.startsWith('tsnap: warning: ')).join('\n');
      if (v.ok) expect({ desc, code: res.code, errors, sum }).toEqual({ desc, code: 0, errors: '', sum: s.sum });
      else expectRefusal('restore', res, `${desc}; verify said: ${v.message}`);
      for (const args of [['verify', top], ['show', top], ['show', top, '--json']]) {
        const c = await withTimeout(args).done;
        expect(c.timedOut, `${args[0]} hung after ${desc}`).toBe(false);
        if (v.ok && args[0] === 'verify') expect(c.code, c.stderr).toBe(0);
        else if (c.code !== 0 || args[0] === 'verify') expectRefusal(args.join(' '), c, desc);
      }
    }
    if (inFlight === 0) expect(fuzzeeProcesses(), `a process left behind after ${desc}`).toEqual([]);
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
  tally.runs++;
  (tally.byKind[kind] ??= { runs: 0, refused: 0 }).runs++;
}

describe('image fuzzing', () => {
  it('the unmutated images verify and restore the exact memory', async () => {
    for (const s of subjects) {
      expect(inProcess(() => verify(join(s.root, s.top)))).toEqual({ ok: true });
      const { r, sum } = await restoreAndSum(join(s.root, s.top));
      expect(r.code, r.stderr).toBe(0);
      expect(sum).toBe(s.sum);
    }
    expect(fuzzeeProcesses()).toEqual([]);
  });

  it(`${MUTATIONS} mutations: each restores the exact memory or is refused with exit 7 and one line`, async () => {
    const tally: Tally = { runs: 0, refused: 0, restored: 0, cliRuns: 0, byKind: {} };
    let next = 0;
    // Two at a time: the machine's two cores, shared with the rest of the suite.
    const worker = async () => { while (next < MUTATIONS) await runOne(next++, tally); };
    await Promise.all([worker(), worker()]);
    expect(fuzzeeProcesses(), 'processes left behind').toEqual([]);
    console.log(`image fuzzing: ${tally.runs} mutations (seed ${SEED}): ${tally.refused} refused (exit 7), ${tally.restored} restored exactly; ${tally.cliRuns} also through the CLI; 0 crashes, 0 hangs, 0 wrong restores\n`
      + Object.entries(tally.byKind).map(([k, t]) => `  ${k}: ${t.runs} runs, ${t.refused} refused`).join('\n'));
    expect(tally.runs).toBe(MUTATIONS);
  }, Math.max(600_000, MUTATIONS * 3_000));
});

describe('chunks a restore does not read', () => {
  it('are checked too: restore refuses a chain with a damaged chunk no page needs, before creating anything', async () => {
    const base = tmpDir('tsnap-fuzz-unread-');
    const chain = subjects.find((x) => x.name === 'chain')!;
    const dir = join(base, 'img');
    cpSync(chain.root, dir, { recursive: true });
    // An extra raw chunk in level 1 that no run refers to, with a CRC that does not match its bytes.
    const pagesPath = join(dir, '1', 'pages');
    const pages = readFileSync(pagesPath);
    const length = pages.length - HEADER_SIZE;
    const extra = Buffer.alloc(4096, 0x5a);
    writeFileSync(pagesPath, Buffer.concat([
      encodeHeader({ version: 1, kind: 4, flags: 0, payloadLength: length + extra.length, payloadCrc: 0 }), pages.subarray(HEADER_SIZE), extra,
    ]));
    const pm = packr.unpack(readFileSync(join(dir, '1', 'pagemap')).subarray(HEADER_SIZE)) as { chunks: number[][] };
    pm.chunks.push([length, extra.length, extra.length, 0, (crc32(extra) ^ 1) >>> 0]);
    reseal(dir, join('1', 'pagemap'), packr.pack(pm), true);
    const invPath = join(dir, '1', 'inventory');
    const inv = packr.unpack(readFileSync(invPath).subarray(HEADER_SIZE)) as { files: Record<string, { length: number; crc32: number }> };
    inv.files.pages.length = length + extra.length;
    writeFileSync(invPath, sealed(packr.pack(inv), 1));
    // The parent's inventory changed: the child records the parent's id only, which is unchanged.
    const top = join(dir, '2');
    const v = inProcess(() => verify(top));
    expect(v.ok).toBe(false);
    const chunk = pm.chunks.length - 1;
    expect(v.ok ? '' : v.message).toMatch(new RegExp(`chunk ${chunk} checksum mismatch`));
    const lib = await restoreInProcess(top, base);
    expect(lib).toEqual({ ok: false, message: v.ok ? '' : v.message });
    expect(fuzzeeProcesses()).toEqual([]);
  });
});

describe('tree images', () => {
  it('a member directory or file from another dump of the same tree is refused by verify and restore (exit 7, one line)', async () => {
    const p = await startProcess(await compileC('tree'), []);
    const kids = [Number(p.readyInfo.child1), Number(p.readyInfo.child2)];
    const t = tmpDir('tsnap-fuzz-tree-');
    try {
      for (const n of ['1', '2']) await ok('dump', '--pid', String(p.pid), '--dir', join(t, n), '--tree', '--leave-running');
    } finally {
      for (const pid of [p.pid, ...kids]) await killPid(pid);
    }
    const child = String(kids[1]);
    const cases: [string, (d: string) => void][] = [
      ['a member directory', (d) => { rmSync(join(d, child), { recursive: true }); cpSync(join(t, '2', child), join(d, child), { recursive: true }); }],
      ['a member\'s inventory', (d) => cpSync(join(t, '2', child, 'inventory'), join(d, child, 'inventory'))],
    ];
    // A blocked process may well have dumped the same process file twice: swapping those changes nothing.
    for (const file of ['process', 'pagemap']) {
      if (!readFileSync(join(t, '1', child, file)).equals(readFileSync(join(t, '2', child, file)))) {
        cases.push([`a member's ${file} file`, (d) => cpSync(join(t, '2', child, file), join(d, child, file))]);
      }
    }
    for (const [what, mutate] of cases) {
      const d = join(t, `m-${cases.findIndex((c) => c[0] === what)}`);
      cpSync(join(t, '1'), d, { recursive: true });
      mutate(d);
      for (const args of [['verify', d], ['restore', '--dir', d, '--detach']]) {
        const r = await tsnap(...args);
        expectRefusal(args[0], r, `${what} from another dump`);
        expect(r.stderr).toContain(join(d, child));
      }
    }
  });
});

describe('thread state', () => {
  it('an XSAVE area of a length this CPU does not give its features (valid CRCs) is refused by verify and restore (exit 7, one line)', async () => {
    const full = subjects.find((x) => x.name === 'full')!;
    const base = tmpDir('tsnap-fuzz-xsave-');
    for (const extra of [1, 8, 64]) {
      const dir = join(base, `img-${extra}`);
      cpSync(full.root, dir, { recursive: true });
      const proc = readMetaFile<{ threads: { xstate: Uint8Array }[] }>(dir, FileKind.Process);
      const x = proc.threads[0].xstate;
      proc.threads[0].xstate = Buffer.concat([Buffer.from(x.buffer, x.byteOffset, x.length), Buffer.alloc(extra)]);
      rmSync(join(dir, 'process'));
      const w = writeMetaFile(dir, FileKind.Process, proc);
      const invPath = join(dir, 'inventory');
      const inv = packr.unpack(readFileSync(invPath).subarray(HEADER_SIZE)) as { files: Record<string, { length: number; crc32: number }> };
      inv.files.process = { length: w.length, crc32: w.crc32 };
      writeFileSync(invPath, sealed(packr.pack(inv), 1));
      const v = inProcess(() => verify(dir));
      expect(v.ok, `${extra} bytes more`).toBe(false);
      expect(v.ok ? '' : v.message).toMatch(/XSAVE|xstate/);
      for (const args of [['verify', dir], ['restore', '--dir', dir, '--detach']]) expectRefusal(args[0], await tsnap(...args), `an XSAVE area ${extra} bytes longer`);
    }
    expect(fuzzeeProcesses()).toEqual([]);
  });
});

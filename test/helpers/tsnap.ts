/** Running the real CLI and reading images back, for end-to-end tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { readImage, type Image } from '../../src/image/image-reader.js';
import { PageFileReader } from '../../src/image/page-file.js';
import { PageWhere } from '../../formats/schema.js';

export const TSNAP_BIN = fileURLToPath(new URL('../../bin/tsnap', import.meta.url));

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** `env` is merged over process.env (e.g. TSNAP_TEST_PAUSE_AT, see src/fault-points.ts). */
export function startTsnap(args: string[], env: Record<string, string> = {}): { child: ChildProcess; done: Promise<CliResult> } {
  const child = spawn(process.execPath, [TSNAP_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => { stdout += d; });
  child.stderr!.on('data', (d) => { stderr += d; });
  const done = new Promise<CliResult>((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return { child, done };
}

export function tsnap(...args: string[]): Promise<CliResult> {
  return startTsnap(args).done;
}

/** Every page an image stores, as [address, bytes] pairs in address order. */
export function* storedPages(img: Image): Generator<{ addr: number; data: Buffer }> {
  const reader = new PageFileReader(img.dir, img.pagemap.chunks);
  try {
    let cached = -1;
    let chunk: Buffer = Buffer.alloc(0);
    for (const r of img.pagemap.runs) {
      if (r.where !== PageWhere.Here) continue;
      if (r.chunk !== cached) { chunk = reader.readChunk(r.chunk); cached = r.chunk; }
      yield { addr: r.start, data: chunk.subarray(r.offset, r.offset + r.pages * 4096) };
    }
  } finally {
    reader.close();
  }
}

/** Set of page addresses the image stores. */
export function storedPageSet(img: Image): Set<number> {
  const s = new Set<number>();
  for (const r of img.pagemap.runs) {
    if (r.where !== PageWhere.Here) continue;
    for (let i = 0; i < r.pages; i++) s.add(r.start + i * 4096);
  }
  return s;
}

export { readImage };

import { readFileSync } from 'node:fs';
import { LineLog } from './lines.js';
import { expect } from 'vitest';
import { join } from 'node:path';
import { killPid, trackChild, trackRestored, useProcessCleanup } from './processes.js';

/** A process brought back by `tsnap restore --detach`, talking through pipes. */
export interface Restored {
  pid: number;
  result: CliResult;
  lines: string[];
  waitForLine(re: RegExp, timeoutMs?: number, from?: number): Promise<string>;
  writeLine(s: string): void;
}

export { killPid };

/**
 * The same cleanup as useProcessCleanup (processes.ts ends restored
 * processes and their feeders too); kept under this name so that test
 * files written against it still work.
 */
export const useRestoredCleanup = useProcessCleanup;

export async function restoreDetached(dir: string, pidfile: string, extra: string[] = [], opts: { env?: Record<string, string>; onSpawn?: (tsnapPid: number) => void } = {}): Promise<Restored> {
  // Node closes a child's stdin pipe when the child exits, and tsnap --detach
  // exits at once: feed the restored process through a `cat` that outlives it.
  const feeder = spawn('cat', [], { stdio: ['pipe', 'pipe', 'ignore'] });
  // Waited for: a feeder still exiting would count as left behind.
  trackChild(feeder);
  const child = spawn(process.execPath, [TSNAP_BIN, 'restore', '--dir', dir, '--detach', '--pidfile', pidfile, ...extra], { stdio: [feeder.stdout!, 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  opts.onSpawn?.(child.pid!);
  let stderr = '';
  child.stderr!.on('data', (d) => { stderr += d; });
  // tsnap exits at once; the restored process keeps the pipes (their end is its exit).
  const out: LineLog = new LineLog(`process restored from ${dir}`, (): string => `got: ${out.lines.slice(-5).join(' | ')} stderr: ${stderr}`).follow(child.stdout);
  const code: number | null = await new Promise((resolve) => child.on('exit', (c) => resolve(c)));
  const result: CliResult = { code, signal: null, stdout: out.lines.map((l) => `${l}\n`).join(''), stderr };
  if (code !== 0) return { pid: 0, result, lines: out.lines, waitForLine: async () => { throw new Error(stderr); }, writeLine: () => {} };
  const pid = Number(readFileSync(pidfile, 'utf8').trim());
  trackRestored(pid);
  return {
    pid, result, lines: out.lines,
    writeLine: (s) => feeder.stdin!.write(`${s}\n`),
    waitForLine: (re, timeoutMs = 5000, from = 0) => out.waitFor(re, timeoutMs, from),
  };
}

/**
 * The common round trip: dump `p` (kill mode) into WORK/img, wait for it
 * to be gone, restore it detached; both steps must succeed.
 */
export async function dumpKillRestore(p: { pid: number; exited: Promise<unknown> }, work: string, dumpArgs: string[] = []): Promise<Restored> {
  const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), ...dumpArgs);
  expect(d.code, d.stderr).toBe(0);
  await p.exited;
  const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
  expect(r.result.code, r.result.stderr).toBe(0);
  return r;
}

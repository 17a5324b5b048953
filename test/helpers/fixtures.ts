/**
 * Test harness for building and running small real programs (C fixtures in
 * test/fixtures/, or python3 one-liners) that tsnap can checkpoint/restore.
 *
 * Typical use:
 *
 *   useProcessCleanup();                       // afterEach: ends what the test started (processes.ts)
 *   const bin = await compileC('memstate');
 *   const p = await startProcess(bin, ['read']);
 *   const anon = parseHex(p.readyInfo.anon);
 *   ...
 *   p.writeLine('');                           // ask the fixture to self-check
 *   await p.waitForLine(/^(PASS|FAIL)/, 5000, mark);
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setCloexec } from '../../src/sys/fd.js';
import { track, endStarted, useProcessCleanup } from './processes.js';
import { LineLog } from './lines.js';

export { useProcessCleanup };

// Programs the tests start must own nothing but stdio: fds the test runner
// inherited from its own parent (CI shells, editors) would otherwise leak
// into every fixture and end up in its image.
for (const name of fs.readdirSync('/proc/self/fd')) {
  const fd = Number(name);
  if (fd > 2) {
    try { setCloexec(fd); } catch { /* the directory fd itself, already closed */ }
  }
}

// ---------------------------------------------------------------------------
// Compilation
// ---------------------------------------------------------------------------

/** Directory holding the C fixture sources. */
export const FIXTURES_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures');

/** Cache directory for compiled fixtures (shared by all workers and runs). */
export const FIXTURE_CACHE_DIR = path.join(os.tmpdir(), 'tsnap-fixtures');

const BASE_CFLAGS = ['-O1', '-g', '-Wall'];

/** Extra flags from a first-line comment `// cflags: -mavx -O1`. */
export function parseCflags(source: string): string[] {
  const first = source.split('\n', 1)[0] ?? '';
  const m = /^\s*\/\/\s*cflags:(.*)$/.exec(first);
  if (!m) return [];
  return m[1].trim().split(/\s+/).filter((s) => s.length > 0);
}

/** Source text of the file plus every `#include "..."` it pulls in (recursively). */
function collectSources(file: string, seen = new Set<string>()): string[] {
  if (seen.has(file)) return [];
  seen.add(file);
  const text = fs.readFileSync(file, 'utf8');
  const out = [`${path.basename(file)}\0${text}`];
  for (const m of text.matchAll(/^\s*#\s*include\s*"([^"]+)"/gm)) {
    const inc = path.resolve(path.dirname(file), m[1]);
    if (fs.existsSync(inc)) out.push(...collectSources(inc, seen));
  }
  return out;
}

function run(cmd: string, args: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      } else {
        resolve({ stdout, stderr });
      }
    });
  });
}

const compileMemo = new Map<string, Promise<string>>();

/**
 * Compile test/fixtures/NAME.c with `gcc -O1 -g -Wall -o OUT SRC [cflags...]`
 * into FIXTURE_CACHE_DIR, keyed by sha256 of the sources (including local
 * headers) and flags. Safe to call concurrently from several processes:
 * each compiles to a unique temp name and renames it into place atomically.
 * Returns the absolute path of the binary.
 */
export function compileC(name: string): Promise<string> {
  const src = path.join(FIXTURES_DIR, `${name}.c`);
  let text: string;
  let sources: string[];
  try {
    text = fs.readFileSync(src, 'utf8');
    sources = collectSources(src);
  } catch (e) {
    return Promise.reject(new Error(`compileC(${name}): cannot read ${src}: ${(e as Error).message}`));
  }
  const flags = [...BASE_CFLAGS, ...parseCflags(text)];
  const hash = createHash('sha256')
    .update(JSON.stringify({ flags, arch: process.arch, sources }))
    .digest('hex')
    .slice(0, 24);
  const out = path.join(FIXTURE_CACHE_DIR, `${name}-${hash}`);

  const memo = compileMemo.get(out);
  if (memo) return memo;
  const p = (async () => {
    if (isExecutable(out)) return out;
    fs.mkdirSync(FIXTURE_CACHE_DIR, { recursive: true });
    const tmp = `${out}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
    const args = [...BASE_CFLAGS, '-o', tmp, src, ...flags.slice(BASE_CFLAGS.length)];
    try {
      const { stderr } = await run('gcc', args);
      if (stderr.trim()) console.warn(`gcc warnings for ${name}.c:\n${stderr}`);
      fs.renameSync(tmp, out);
    } catch (e) {
      fs.rmSync(tmp, { force: true });
      throw e;
    }
    return out;
  })();
  compileMemo.set(out, p);
  p.catch(() => compileMemo.delete(out));
  return p;
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

export interface StartOptions {
  cwd?: string;
  /** Merged over process.env. */
  env?: Record<string, string | undefined>;
  /** Default 'pipe' (the fixtures' `read` mode blocks on it). */
  stdin?: 'pipe' | 'ignore';
  /** Default /READY/. */
  readyPattern?: RegExp;
  /** Default 30000. */
  timeoutMs?: number;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Running {
  readonly pid: number;
  readonly child: ChildProcess;
  /** stdout lines received so far (a copy). */
  lines(): string[];
  /** stderr lines received so far (a copy). */
  stderrLines(): string[];
  /**
   * Resolve with the first stdout line matching `re` whose index is >=
   * `fromIndex` (default 0, i.e. lines already received count too). To wait
   * for the NEXT match, pass the current count:
   *   const mark = p.lines().length; p.writeLine(''); await p.waitForLine(/PASS/, 5000, mark);
   * Rejects (with the collected output) on timeout (default 5000 ms) or when
   * the process has exited and its output is drained without a match.
   */
  waitForLine(re: RegExp, timeoutMs?: number, fromIndex?: number): Promise<string>;
  /** key=value tokens of the line that matched readyPattern. */
  readonly readyInfo: Record<string, string>;
  /** The line that matched readyPattern. */
  readonly readyLine: string;
  /** Write `s + '\n'` to stdin (requires stdin: 'pipe'). */
  writeLine(s: string): void;
  /** Close stdin (the fixtures' `read` mode then exits). */
  closeStdin(): void;
  /** True until the 'exit' event was seen. */
  alive(): boolean;
  /**
   * SIGKILL by pid and wait for the exit (works if already gone, stopped or
   * ptrace-stopped). Rejects if the process cannot be reaped within
   * `timeoutMs` (default 5000), e.g. a foreign tracer that never waits.
   */
  kill(timeoutMs?: number): Promise<void>;
  /** Resolves when the process exits (never rejects). */
  readonly exited: Promise<ExitInfo>;
}

const registry = new Set<Running>();

/** Processes started by this worker that have not exited yet. */
export function liveProcesses(): Running[] {
  return [...registry].filter((r) => r.alive());
}

/** Parse `key=value` whitespace-separated tokens of a line. */
export function parseKeyValues(line: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const tok of line.trim().split(/\s+/)) {
    const i = tok.indexOf('=');
    if (i > 0) out[tok.slice(0, i)] = tok.slice(i + 1);
  }
  return out;
}

/** Parse a `0x...` (or bare hex) string to a number; throws if not exact. */
export function parseHex(s: string | undefined): number {
  if (s === undefined || !/^(0x)?[0-9a-f]+$/i.test(s)) throw new Error(`not a hex number: ${s}`);
  const n = Number.parseInt(s, 16);
  if (!Number.isSafeInteger(n)) throw new Error(`hex number too large: ${s}`);
  return n;
}

function nonGlobal(re: RegExp): RegExp {
  return re.global || re.sticky ? new RegExp(re.source, re.flags.replace(/[gy]/g, '')) : re;
}

function procStatus(pid: number): string {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const pick = (k: string) => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(s)?.[1] ?? '?';
    return `State=${pick('State')} TracerPid=${pick('TracerPid')}`;
  } catch {
    return 'no /proc entry';
  }
}

/**
 * Spawn `cmd args` and resolve once a stdout line matches readyPattern.
 * Rejects with the collected output if the process exits first or on timeout
 * (the process is then killed). Every started process is registered for
 * killAll().
 */
export function startProcess(cmd: string, args: string[], opts: StartOptions = {}): Promise<Running> {
  const readyRe = nonGlobal(opts.readyPattern ?? /READY/);
  // Generous: a 768 MiB fixture filling its memory took over 10 s once while apt and a build shared the 2 cores.
  const timeoutMs = opts.timeoutMs ?? 30000;
  const desc = [cmd, ...args].join(' ');

  let child: ChildProcess;
  try {
    child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: { ...process.env, ...(opts.env ?? {}) },
      stdio: [opts.stdin ?? 'pipe', 'pipe', 'pipe'],
      detached: false,
    });
  } catch (e) {
    return Promise.reject(e);
  }

  let exitInfo: ExitInfo | undefined;
  const dump = (): string =>
    `--- stdout ---\n${out.lines.join('\n')}\n--- stderr ---\n${err.lines.join('\n')}\n` +
    (exitInfo ? `--- exit code=${exitInfo.code} signal=${exitInfo.signal}` : '');
  // stdout ends when the process has exited and its output is consumed (or given up waiting for).
  const out: LineLog = new LineLog(desc, dump).follow(child.stdout, false);
  const err = new LineLog(desc, dump).follow(child.stderr);
  // Writing to the stdin of a dead process must not crash the worker.
  child.stdin?.on('error', () => {});

  let resolveExited!: (e: ExitInfo) => void;
  const exited = new Promise<ExitInfo>((r) => (resolveExited = r));
  child.on('exit', (code, signal) => {
    exitInfo = { code, signal };
    resolveExited(exitInfo);
    // Give the pipes a moment to deliver the last output.
    setTimeout(() => out.end(), 200).unref();
  });
  child.on('close', () => {
    out.flush();
    err.flush();
    if (exitInfo) out.end();
  });

  const waitFor = (re: RegExp, ms: number, from: number, what: string): Promise<string> => out.waitFor(re, ms, from, what);

  const kill = async (ms = 5000): Promise<void> => {
    if (!exitInfo) {
      try {
        process.kill(child.pid!, 'SIGKILL');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
      }
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        exited,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`kill(${child.pid}): not reaped after ${ms} ms (${procStatus(child.pid!)})`)),
            ms,
          );
        }),
      ]);
    } finally {
      if (timer) clearTimeout(timer);
    }
  };

  return new Promise<Running>((resolve, reject) => {
    if (child.pid === undefined) {
      child.once('error', (e) => reject(new Error(`${desc}: spawn failed: ${e.message}`)));
      return;
    }
    const pid = child.pid;
    child.on('error', () => {}); // e.g. kill() racing with exit; handled via exit/ESRCH
    let readyLine = '';
    const running: Running = {
      pid,
      child,
      lines: () => out.lines.slice(),
      stderrLines: () => err.lines.slice(),
      waitForLine: (re, ms = 5000, from = 0) => waitFor(re, ms, from, 'line'),
      get readyInfo() {
        return parseKeyValues(readyLine);
      },
      get readyLine() {
        return readyLine;
      },
      writeLine(s: string) {
        if (!child.stdin) throw new Error(`${desc}: stdin is not a pipe`);
        child.stdin.write(s + '\n');
      },
      closeStdin() {
        child.stdin?.end();
      },
      alive: () => exitInfo === undefined,
      kill,
      exited,
    };
    registry.add(running);
    track({ pid, end: () => kill() }, exited);
    void exited.then(() => registry.delete(running));

    waitFor(readyRe, timeoutMs, 0, 'ready pattern').then(
      (line) => {
        readyLine = line;
        resolve(running);
      },
      (e: Error) => {
        // Don't leave a half-started process behind.
        kill().then(
          () => reject(e),
          () => reject(e),
        );
      },
    );
  });
}

/** Run `python3 -u -c script ...args` like startProcess (stdout unbuffered). */
export function startPython(script: string, args: string[] = [], opts: StartOptions = {}): Promise<Running> {
  return startProcess('python3', ['-u', '-c', script, ...args], opts);
}

/** SIGKILL everything the test started that is still alive (these processes, restored ones, servers) and wait for them. */
export const killAll = endStarted;

// Last resort if the worker exits with processes still running.
process.once('exit', () => {
  for (const r of liveProcesses()) {
    try {
      process.kill(r.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

// ---------------------------------------------------------------------------
// /proc/PID/mem
// ---------------------------------------------------------------------------

/** Read `len` bytes at virtual address `addr` of process `pid`. Throws on a short read. */
export function readProcMem(pid: number, addr: number | bigint, len: number): Buffer {
  const fd = fs.openSync(`/proc/${pid}/mem`, 'r');
  try {
    const buf = Buffer.alloc(len);
    let done = 0;
    while (done < len) {
      const pos = typeof addr === 'bigint' ? addr + BigInt(done) : addr + done;
      const n = fs.readSync(fd, buf, done, len - done, pos);
      if (n === 0) throw new Error(`readProcMem(${pid}, 0x${addr.toString(16)}, ${len}): short read at +${done}`);
      done += n;
    }
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

/** Write `data` at virtual address `addr` of process `pid` (for corrupting fixtures in tests). */
export function writeProcMem(pid: number, addr: number | bigint, data: Uint8Array): void {
  const fd = fs.openSync(`/proc/${pid}/mem`, 'r+');
  try {
    let done = 0;
    while (done < data.length) {
      const pos = Number(addr) + done; // exact below 2^53
      const n = fs.writeSync(fd, data, done, data.length - done, pos);
      if (n === 0) throw new Error(`writeProcMem(${pid}, 0x${addr.toString(16)}): short write at +${done}`);
      done += n;
    }
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------
// Temp dirs
// ---------------------------------------------------------------------------

const tmpDirs = new Set<string>();

/** Create a fresh directory `${os.tmpdir()}/PREFIXxxxxxx`; removed by cleanupTmpDirs(). */
export function tmpDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tmpDirs.add(dir);
  return dir;
}

/** Remove every directory created by tmpDir() so far. */
export function cleanupTmpDirs(): void {
  for (const d of tmpDirs) {
    fs.rmSync(d, { recursive: true, force: true });
    tmpDirs.delete(d);
  }
}

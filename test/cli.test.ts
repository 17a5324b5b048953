/**
 * The command line as a user and an orchestrator meet it: check, verify,
 * demo, every --json output against its schema in formats/json, exit
 * codes, --quiet/--verbose/--log-file, progress, completion, --help, and
 * the library API imported as 'tsnap'.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { readFileSync, readdirSync, writeFileSync, openSync, writeSync, closeSync, existsSync, mkdirSync, chmodSync } from 'node:fs';
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, restoreDetached, killPid, TSNAP_BIN } from './helpers/tsnap.js';
import { ExitCode } from '../src/errors.js';
import { Output } from '../src/cli/output.js';
import { readStatus } from '../src/proc/index.js';
import { PF_KTHREAD, readStat } from '../src/proc/stat.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SCHEMAS = join(ROOT, 'formats', 'json');
const ajv = new Ajv({ allErrors: true, strict: false });
for (const f of readdirSync(SCHEMAS)) ajv.addSchema(JSON.parse(readFileSync(join(SCHEMAS, f), 'utf8')));

function expectSchema(name: string, doc: unknown): void {
  const validate = ajv.getSchema(`${name}.schema.json`)!;
  const ok = validate(doc);
  expect(ok, JSON.stringify(validate.errors)).toBe(true);
}

function lastJson(out: string): unknown {
  return JSON.parse(out.trim().split('\n').pop()!);
}

describe('tsnap check', () => {
  it('reports this machine\'s real features, as a table and as schema-valid JSON', async () => {
    const t = await tsnap('check');
    expect(t.code, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/PAGEMAP_SCAN\s+ok/);
    const j = await tsnap('check', '--json');
    const doc = JSON.parse(j.stdout) as { ok: boolean; items: { feature: string; ok: boolean }[] };
    expectSchema('check', doc);
    const item = (f: string) => doc.items.find((i) => i.feature === f)!;
    // This kernel and this root have them all (kernel-facts.md) ...
    for (const f of ['PAGEMAP_SCAN', 'userfaultfd WP_ASYNC', 'ptrace seize/interrupt', 'process_vm_readv', 'pidfd_getfd', 'clone3 set_tid', 'PR_SET_MM_MAP', 'vdso layout']) {
      expect(item(f).ok, f).toBe(true);
    }
    // ... but not CAP_SYS_RESOURCE when CapEff lacks bit 24.
    const capEff = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]}`);
    expect(item('CAP_SYS_RESOURCE').ok).toBe(((capEff >> 24n) & 1n) === 1n);
    expect(doc.ok).toBe(true);
  });
});

describe('json outputs and tsnap verify', () => {
  it('dump, pre-dump, restore, show and verify print schema-valid JSON; verify finds damage and a missing parent', async () => {
    const work = tmpDir('tsnap-cli-');
    const p = await startProcess(await compileC('counter'), []);
    const pre = await tsnap('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'), '--json');
    expect(pre.code, pre.stderr).toBe(0);
    expectSchema('dump', JSON.parse(pre.stdout));
    const fin = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--parent', join(work, '1'), '--json');
    expect(fin.code, fin.stderr).toBe(0);
    expectSchema('dump', JSON.parse(fin.stdout));
    await p.exited;

    const show = await tsnap('show', join(work, '2'), '--json');
    expectSchema('show', JSON.parse(show.stdout));
    const v = await tsnap('verify', join(work, '2'), '--json');
    expect(v.code, v.stderr).toBe(0);
    const vd = JSON.parse(v.stdout) as { processes: { chain: unknown[] }[] };
    expectSchema('verify', vd);
    expect(vd.processes[0].chain.length).toBe(2);

    const r = await restoreDetached(join(work, '2'), join(work, 'pid'), ['--json']);
    expect(r.result.code, r.result.stderr).toBe(0);
    // The restored counter shares that stdout: pick tsnap's own line.
    expectSchema('restore', JSON.parse(r.result.stdout.split('\n').find((l) => l.startsWith('{'))!));
    await killPid(r.pid);

    // One flipped byte in the parent's pages: verify names the file, exit 7.
    const pages = join(work, '1', 'pages');
    const fd = openSync(pages, 'r+');
    writeSync(fd, Buffer.from([readFileSync(pages)[4096] ^ 0xff]), 0, 1, 4096);
    closeSync(fd);
    const bad = await tsnap('verify', join(work, '2'));
    expect(bad.code).toBe(ExitCode.badImage);
    expect(bad.stderr).toContain(join(work, '1', 'pages'));
    expect(bad.stderr.trim().split('\n').length).toBe(1);
    execFileSync('rm', ['-rf', join(work, '1')]);
    const orphan = await tsnap('verify', join(work, '2'));
    expect(orphan.code).toBe(ExitCode.badImage);
    expect(orphan.stderr).toMatch(/parent image .* cannot be read/);
  });

  it('dump --tree --json and a tree verify and show', async () => {
    const work = tmpDir('tsnap-cli-');
    const p = await startProcess(await compileC('tree'), []);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--tree', '--leave-running', '--json');
    expect(d.code, d.stderr).toBe(0);
    expectSchema('dump', JSON.parse(d.stdout));
    const v = await tsnap('verify', join(work, 'img'), '--json');
    expect(v.code, v.stderr).toBe(0);
    expectSchema('verify', JSON.parse(v.stdout));
    expect(JSON.parse(v.stdout).processes.length).toBe(3);
    const s = await tsnap('show', join(work, 'img'), '--json');
    expectSchema('show', JSON.parse(s.stdout));
    expect((await tsnap('show', join(work, 'img'))).stdout).toMatch(/^process tree of \d+ \(dump, 3 processes/);
    const loop = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'loop'), '--tree', '--pre-dumps', '1', '--leave-running', '--json');
    expect(loop.code, loop.stderr).toBe(0);
    expectSchema('dump', JSON.parse(loop.stdout));
  });

  it('migrate --json: the final line matches its schema, and so does every event', async () => {
    const work = tmpDir('tsnap-cli-');
    const srv = spawn(process.execPath, [TSNAP_BIN, 'serve', '--listen', '127.0.0.1:0', '--dir', join(work, 'in'), '--token', 't', '--json', '--count', '1'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let events = '';
    srv.stderr!.on('data', (x) => { events += x; });
    for (let i = 0; i < 500 && !events.includes('"listening"'); i++) await new Promise((res) => setTimeout(res, 10));
    // The first event may be the warning that --token shows in ps.
    const port = (JSON.parse(events.split('\n').find((l) => l.includes('"listening"'))!) as { port: number }).port;
    try {
      const p = await startProcess(await compileC('counter'), []);
      const m = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${port}`, '--token', 't', '--json', '--leave-running');
      expect(m.code, m.stderr).toBe(0);
      expectSchema('migrate', lastJson(m.stdout));
      for (const line of m.stderr.trim().split('\n')) expect(typeof (JSON.parse(line) as { event: string }).event).toBe('string');
    } finally {
      srv.kill('SIGKILL');
    }
  });
});

describe('exit codes', () => {
  it('are distinct per failure class and documented in the README', async () => {
    const work = tmpDir('tsnap-cli-');
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const cases: [string[], number][] = [
      [['dump', '--bogus'], ExitCode.usage],
      [['dump', '--pid', '999999', '--dir', join(work, 'x')], ExitCode.noSuchProcess],
      [['restore', '--dir', join(work, 'nothing-here')], ExitCode.badImage],
      [['verify', work], ExitCode.badImage],
    ];
    writeFileSync(join(work, 'occupied'), 'x');
    const p = await startProcess(await compileC('counter'), []);
    cases.push([['dump', '--pid', String(p.pid), '--dir', work], ExitCode.imageDir]);
    for (const [args, code] of cases) {
      const r = await tsnap(...args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(code);
      expect(r.stderr.trim().split('\n').length, r.stderr).toBeLessThanOrEqual(code === ExitCode.usage ? 3 : 1);
      expect(readme).toContain(`${code} `);
    }
    expect(new Set(Object.values(ExitCode)).size).toBe(Object.values(ExitCode).length);
  });
});

describe('output settings', () => {
  it('--log-file records steps and results; --verbose shows steps; nothing but the result when stderr is not a terminal', async () => {
    const work = tmpDir('tsnap-cli-');
    const p = await startProcess(await compileC('counter'), []);
    const log = join(work, 'tsnap.log');
    const plain = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'a'), '--leave-running');
    expect(plain.code).toBe(0);
    expect(plain.stderr).toBe(''); // no progress line off a terminal
    const verbose = await tsnap('--verbose', '--log-file', log, 'dump', '--pid', String(p.pid), '--dir', join(work, 'b'), '--leave-running');
    expect(verbose.code, verbose.stderr).toBe(0);
    expect(verbose.stderr).toMatch(/copying the memory of \d+\.\.\./);
    const logged = readFileSync(log, 'utf8');
    expect(logged).toMatch(/^\d{4}-\d\d-\d\dT\S+ step copying the memory of/m);
    expect(logged).toMatch(/ result dumped process/);
    const quiet = await tsnap('--quiet', 'dump', '--pid', '999999', '--dir', join(work, 'c'));
    expect(quiet.code).toBe(ExitCode.noSuchProcess);
    expect(quiet.stderr).toMatch(/^tsnap: no process with pid 999999/);
  });

  it('the progress line on a terminal: bytes, percent, rate and time left, redrawn in place', () => {
    let written = '';
    const fake = { isTTY: true, write: (s: string) => { written += s; return true; } } as unknown as NodeJS.WriteStream;
    const o = new Output({}, fake);
    o.progress('copying the memory of 42', 1 << 20, 4 << 20);
    expect(written).toMatch(/\r\x1b\[2Kcopying the memory of 42: 1\.0 MiB of 4\.0 MiB \(25%\), \d+ MiB\/s/);
    o.warn('careful');
    expect(written).toMatch(/\r\x1b\[2Ktsnap: warning: careful\n$/);
    let none = '';
    const pipe = { isTTY: false, write: (s: string) => { none += s; return true; } } as unknown as NodeJS.WriteStream;
    new Output({}, pipe).progress('x', 1, 2);
    expect(none).toBe('');
  });
});

describe('help, completion, demo and the library', () => {
  it('every command\'s --help has examples', async () => {
    const top = await tsnap('--help');
    const commands = [...top.stdout.matchAll(/^  (\S+)(?: \[options\]| <| \[|$)/gm)].map((m) => m[1]).filter((c) => c !== 'help' && !c.startsWith('-'));
    expect(commands).toEqual(expect.arrayContaining(['dump', 'pre-dump', 'restore', 'check', 'verify', 'demo', 'migrate', 'serve', 'show', 'squash', 'untrack', 'release-locks', 'completion']));
    for (const c of commands) {
      const h = await tsnap(c, '--help');
      expect(h.stdout, c).toMatch(/Examples?:\n  (tsnap|npm|source)/);
    }
  });

  it('bash completion completes commands and their options', () => {
    const script = execFileSync(process.execPath, [TSNAP_BIN, 'completion', 'bash']).toString();
    const run = (words: string) => execFileSync('bash', ['-c', `${script}\nCOMP_WORDS=(${words}); COMP_CWORD=$(( \${#COMP_WORDS[@]} - 1 )); _tsnap; echo "\${COMPREPLY[@]}"`]).toString().trim();
    expect(run('tsnap de').split(' ')).toEqual(['demo']);
    expect(run('tsnap dump --tr').split(' ')).toEqual(['--tree']);
    expect(run('tsnap restore --new').split(' ')).toEqual(['--new-pid']);
  });

  it('npm run demo works and shows the workload going on after its restore', () => {
    const out = execFileSync('npm', ['run', '--silent', 'demo'], { cwd: ROOT, timeout: 60_000 }).toString();
    expect(out).toMatch(/pre-dump again: only the pages it wrote since/);
    expect(out).toMatch(/it goes on where it stopped: tick (\d+) ok -> tick \d+ ok/);
    const [, last, next] = /stopped: tick (\d+) ok -> tick (\d+) ok/.exec(out)!;
    expect(Number(next)).toBe(Number(last) + 1);
  });

  it('import { dump, preDump, restore, migrate } from \'tsnap\' works, with the same results as the CLI', async () => {
    const work = tmpDir('tsnap-cli-');
    const p = await startProcess(await compileC('counter'), []);
    const script = `
import { dump, preDump, restore, migrate, verify, TsnapError } from 'tsnap';
const pre = await preDump({ pid: ${p.pid}, dir: ${JSON.stringify(join(work, '1'))} });
const fin = await dump({ pid: ${p.pid}, dir: ${JSON.stringify(join(work, '2'))}, parent: pre.dir });
let err = null;
try { await dump({ pid: 999999, dir: ${JSON.stringify(join(work, 'x'))} }); } catch (e) { err = { isTsnapError: e instanceof TsnapError, kind: e.kind, exitCode: e.exitCode }; }
console.log(JSON.stringify({ migrate: typeof migrate, pre: pre.kind, fin: fin.kind, killed: fin.killed, verified: verify(fin.dir).processes[0].chain.length, err }));
`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT }).toString();
    const r = JSON.parse(out) as Record<string, unknown>;
    expect(r).toEqual({ migrate: 'function', pre: 'full', fin: 'delta', killed: true, verified: 2, err: { isTsnapError: true, kind: 'noSuchProcess', exitCode: ExitCode.noSuchProcess } });
    await p.exited;
    // The library's image restores with the CLI.
    const back = await restoreDetached(join(work, '2'), join(work, 'pid'));
    expect(back.result.code, back.result.stderr).toBe(0);
    expect(existsSync(`/proc/${back.pid}`)).toBe(true);
  });
});

/** A tmpfs mounted for one test (as root), unmounted whatever happens. */
async function withTmpfs<T>(at: string, options: string, fn: () => Promise<T>): Promise<T> {
  mkdirSync(at, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', at]);
  try {
    return await fn();
  } finally {
    execFileSync('umount', ['-l', at]);
  }
}

/** Runs serve until it listens (or exits), then kills it by pid. */
async function serveUntilListening(args: string[]): Promise<{ code: number | null; stderr: string }> {
  const srv = spawn(process.execPath, [TSNAP_BIN, 'serve', '--listen', '127.0.0.1:0', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  srv.stderr!.on('data', (x) => { stderr += x; });
  const exited = new Promise<number | null>((res) => srv.on('close', (c) => res(c)));
  for (let i = 0; i < 1000 && !/listening/.test(stderr) && srv.exitCode === null; i++) await new Promise((res) => setTimeout(res, 10));
  if (srv.exitCode === null && /listening/.test(stderr)) { process.kill(srv.pid!, 'SIGKILL'); await exited; return { code: null, stderr }; }
  return { code: await exited, stderr };
}

describe('messages for what users run into', () => {
  it('a kernel thread is named as one, not as a missing privilege', async () => {
    const kthread = readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number).find((pid) => { try { return (readStat(pid).flags & PF_KTHREAD) !== 0; } catch { return false; } });
    if (kthread === undefined) return; // no kernel thread visible (a pid namespace)
    const work = tmpDir('tsnap-cli-');
    for (const extra of [[], ['--tree']]) {
      const r = await tsnap('dump', '--pid', String(kthread), '--dir', join(work, `k${extra.length}`), ...extra);
      expect(r.code, r.stderr).toBe(ExitCode.unsupported);
      expect(r.stderr).toMatch(new RegExp(`^tsnap: process ${kthread} \\(.*\\) is a kernel thread; tsnap dumps user processes only\n$`));
    }
    expect(readdirSync(work)).toEqual([]);
  });

  it('a zombie is named as one, with its parent', async () => {
    const work = tmpDir('tsnap-cli-');
    const p = await startProcess('python3', ['-c', 'import os, time\npid = os.fork()\nif pid == 0: os._exit(3)\nprint("READY child=%d" % pid, flush=True)\ntime.sleep(60)\n']);
    const child = Number(p.readyInfo.child);
    for (let i = 0; i < 500 && readStat(child).state !== 'Z'; i++) await new Promise((res) => setTimeout(res, 10));
    const r = await tsnap('dump', '--pid', String(child), '--dir', join(work, 'z'));
    expect(r.code, r.stderr).toBe(ExitCode.noSuchProcess);
    expect(r.stderr).toBe(`tsnap: process ${child} (python3) has exited: it is a zombie waiting for its parent (pid ${p.pid}) to reap it; there is nothing left to dump\n`);
    expect(existsSync(join(work, 'z'))).toBe(false);
  });

  it('a new --dir on a read-only file system says so', async () => {
    const work = tmpDir('tsnap-cli-');
    const p = await startProcess(await compileC('counter'), []);
    await withTmpfs(join(work, 'ro'), 'ro,size=1m', async () => {
      const r = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'ro', 'a', 'img'));
      expect(r.code, r.stderr).toBe(ExitCode.imageDir);
      expect(r.stderr).toBe(`tsnap: cannot create ${join(work, 'ro', 'a', 'img')}: read-only file system; choose a --dir on a writable one\n`);
    });
    const n = p.lines().length;
    await p.waitForLine(/^count=/, 5000, n); // untouched, running
  });

  it('a full disk names the file that did not fit; the target runs on intact and the partial image is gone', async () => {
    const work = tmpDir('tsnap-cli-');
    const p = await startProcess(await compileC('bigmem'), ['read', '4']);
    await withTmpfs(join(work, 'full'), 'size=64k', async () => {
      const dir = join(work, 'full', 'img');
      const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
      expect(r.code, r.stderr).toBe(ExitCode.noSpace);
      expect(r.stderr).toBe(`tsnap: dump of process ${p.pid}: no space left on the device writing ${join(dir, 'pages')}; free space or choose another --dir\n`);
      expect(readdirSync(join(work, 'full'))).toEqual([]);
    });
    expect(readStatus(p.pid).tracerPid).toBe(0);
    const n = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000, n)).toBe('PASS');
  });

  it('token files: a missing one, one open to group or others, and one that is fine; --token warns that ps shows it', async () => {
    const work = tmpDir('tsnap-cli-');
    const tok = join(work, 'token');
    const missing = await tsnap('migrate', '--pid', '1', '--to', '127.0.0.1:1', '--token-file', join(work, 'nope'));
    expect(missing.code).toBe(ExitCode.usage);
    expect(missing.stderr).toBe(`tsnap: token file ${join(work, 'nope')} does not exist; create it with the shared secret (chmod 600), or set TSNAP_TOKEN\n`);
    writeFileSync(tok, 'sesame\n');
    for (const [mode, who] of [[0o644, 'group and others'], [0o640, 'group'], [0o604, 'others']] as const) {
      chmodSync(tok, mode);
      const r = await serveUntilListening(['--dir', join(work, 'in'), '--token-file', tok]);
      expect(r.code, r.stderr).toBe(ExitCode.permission);
      expect(r.stderr).toBe(`tsnap: token file ${tok} is open to ${who} (mode 0${mode.toString(8)}); chmod 600 ${tok}\n`);
    }
    chmodSync(tok, 0o600);
    const ok = await serveUntilListening(['--dir', join(work, 'in'), '--token-file', tok]);
    expect(ok.code, ok.stderr).toBeNull();
    expect(ok.stderr).not.toMatch(/warning/);
    const plain = await serveUntilListening(['--dir', join(work, 'in'), '--token', 'sesame']);
    expect(plain.code, plain.stderr).toBeNull();
    expect(plain.stderr).toMatch(/^tsnap: warning: --token is visible to every user of this machine \(ps, \/proc\/PID\/cmdline\); use --token-file/);
    const json = await serveUntilListening(['--dir', join(work, 'in'), '--token', 'sesame', '--json']);
    const events = json.stderr.trim().split('\n').map((l) => JSON.parse(l) as { event: string; message?: string });
    expect(events[0].event).toBe('warning');
    expect(events[0].message).toMatch(/--token is visible to every user/);
  });

  it('serve: an address in use, a missing or a bad TLS file, and a read-only --dir get one line each', async () => {
    const work = tmpDir('tsnap-cli-');
    const tok = join(work, 'token');
    writeFileSync(tok, 'sesame\n', { mode: 0o600 });
    const holder = (await import('node:net')).createServer();
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', () => r()));
    const port = (holder.address() as { port: number }).port;
    try {
      const inUse = await tsnap('serve', '--listen', `127.0.0.1:${port}`, '--dir', join(work, 'in'), '--token-file', tok);
      expect(inUse.code).toBe(ExitCode.usage);
      expect(inUse.stderr).toBe(`tsnap: cannot listen on 127.0.0.1:${port}: the address is in use (another tsnap serve?); choose another --listen\n`);
    } finally {
      holder.close();
    }
    const noCert = await tsnap('serve', '--listen', '127.0.0.1:0', '--dir', join(work, 'in'), '--token-file', tok, '--tls-cert', join(work, 'nope.pem'), '--tls-key', join(work, 'nope.pem'));
    expect(noCert.code).toBe(ExitCode.usage);
    expect(noCert.stderr).toBe(`tsnap: cannot read --tls-cert ${join(work, 'nope.pem')}: ENOENT; give a PEM file\n`);
    writeFileSync(join(work, 'junk.pem'), 'junk\n');
    const junk = await tsnap('serve', '--listen', '127.0.0.1:0', '--dir', join(work, 'in'), '--token-file', tok, '--tls-cert', join(work, 'junk.pem'), '--tls-key', join(work, 'junk.pem'));
    expect(junk.code).toBe(ExitCode.usage);
    expect(junk.stderr).toMatch(/^tsnap: --tls-cert \S+ \/ --tls-key \S+: .*; give a PEM certificate and its private key\n$/);
    await withTmpfs(join(work, 'ro'), 'ro,size=1m', async () => {
      const ro = await tsnap('serve', '--listen', '127.0.0.1:0', '--dir', join(work, 'ro', 'in'), '--token-file', tok);
      expect(ro.code).toBe(ExitCode.imageDir);
      expect(ro.stderr).toBe(`tsnap: cannot create ${join(work, 'ro', 'in')}: read-only file system; choose a --dir on a writable one\n`);
    });
  });

  it('show --json into a reader that stops early (| head) ends quietly', async () => {
    const work = tmpDir('tsnap-cli-');
    const p = await startProcess(await compileC('counter'), []);
    expect((await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--leave-running')).code).toBe(0);
    const child = spawn(process.execPath, [TSNAP_BIN, 'show', join(work, 'img'), '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.destroy(); // the reader is gone before tsnap writes a byte
    let stderr = '';
    child.stderr!.on('data', (x) => { stderr += x; });
    const code = await new Promise<number | null>((res) => child.on('close', (c) => res(c)));
    expect(stderr).toBe('');
    expect(code).toBe(0);
  });
});

describe('integer options', () => {
  it('a count, round limit, downtime or port that is not a whole number in range is a usage error (exit 2), before anything runs', async () => {
    const cases: [string[], RegExp][] = [
      [['serve', '--count', 'x', '--dir', '/nonexistent/tsnap'], /--count must be a whole number of at least 1, got "x"/],
      [['serve', '--count', '0', '--dir', '/nonexistent/tsnap'], /--count must be/],
      [['migrate', '--pid', '1', '--to', '127.0.0.1:7707', '--token', 't', '--max-iterations', '2.5'], /--max-iterations must be a whole number from 0 to 1000/],
      [['migrate', '--pid', '1', '--to', '127.0.0.1:7707', '--token', 't', '--downtime-ms', '-1'], /--downtime-ms must be/],
      [['migrate', '--pid', '1', '--to', '127.0.0.1:99999', '--token', 't'], /port must be from 0 to 65535/],
      [['dump', '--pid', '1', '--dir', '/nonexistent/tsnap', '--pre-dumps', 'many'], /--pre-dumps must be/],
    ];
    for (const [args, msg] of cases) {
      const r = await tsnap(...args);
      expect(r.code, args.join(' ')).toBe(ExitCode.usage);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stderr).toMatch(msg);
    }
  });
});

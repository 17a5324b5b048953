import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  cleanupTmpDirs,
  compileC,
  FIXTURE_CACHE_DIR,
  killAll,
  liveProcesses,
  parseCflags,
  parseHex,
  parseKeyValues,
  readProcMem,
  startProcess,
  startPython,
  tmpDir,
  useProcessCleanup,
  writeProcMem,
} from './helpers/fixtures.js';

useProcessCleanup();
afterAll(cleanupTmpDirs);

const FIXTURES = ['memstate', 'counter', 'fpu', 'bigmem'] as const;
const bins: Record<string, string> = {};

beforeAll(async () => {
  const paths = await Promise.all(FIXTURES.map((f) => compileC(f)));
  FIXTURES.forEach((f, i) => (bins[f] = paths[i]));
}, 60_000);

const procGone = (pid: number) => !fs.existsSync(`/proc/${pid}`);
const MASK64 = (1n << 64n) - 1n;

describe('compileC', () => {
  it('builds every fixture into the cache and reuses it', async () => {
    for (const f of FIXTURES) {
      expect(path.dirname(bins[f])).toBe(FIXTURE_CACHE_DIR);
      expect(fs.statSync(bins[f]).mode & 0o111).not.toBe(0);
    }
    // Reused, not built again: the same files, untouched (not a time limit, which a loaded machine breaks).
    const stamp = (f: string) => { const st = fs.statSync(f); return `${st.ino}:${st.mtimeMs}`; };
    const before = [stamp(bins.memstate), stamp(bins.fpu)];
    const again = await Promise.all([compileC('memstate'), compileC('memstate'), compileC('fpu')]);
    expect(again).toEqual([bins.memstate, bins.memstate, bins.fpu]);
    expect([stamp(bins.memstate), stamp(bins.fpu)]).toEqual(before);
  });

  it('parses a first-line cflags comment', () => {
    expect(parseCflags('// cflags: -mavx -O1\nint main(void){}')).toEqual(['-mavx', '-O1']);
    expect(parseCflags('int x; // cflags: -mavx\n')).toEqual([]);
    const fpuSrc = fs.readFileSync(new URL('./fixtures/fpu.c', import.meta.url), 'utf8');
    expect(parseCflags(fpuSrc)).toContain('-mavx');
  });

  it('rejects for a missing fixture', async () => {
    await expect(compileC('no-such-fixture')).rejects.toThrow(/cannot read/);
  });
});

describe('helpers', () => {
  it('parseKeyValues / parseHex', () => {
    expect(parseKeyValues('READY addr=0x7f00 size=4096 junk')).toEqual({ addr: '0x7f00', size: '4096' });
    expect(parseHex('0x7fffffffe000')).toBe(0x7fffffffe000);
    expect(() => parseHex('zz')).toThrow();
  });

  it('tmpDir creates fresh dirs that cleanupTmpDirs removes', () => {
    const a = tmpDir('tsnap-h-');
    const b = tmpDir('tsnap-h-');
    expect(a).not.toBe(b);
    fs.writeFileSync(path.join(a, 'x'), 'y');
    cleanupTmpDirs();
    expect(fs.existsSync(a)).toBe(false);
    expect(fs.existsSync(b)).toBe(false);
  });
});

describe('memstate', () => {
  it('reaches READY, memory is readable via /proc/PID/mem, self check passes and detects corruption', async () => {
    const dir = tmpDir('tsnap-memstate-');
    const p = await startProcess(bins.memstate, ['read', '4'], { env: { TSNAP_FIXTURE_TMPDIR: dir } });
    const info = p.readyInfo;
    for (const k of [
      'anon', 'anonsize', 'shared', 'sharedsize', 'file', 'filepath', 'filesize',
      'prot_none', 'ro', 'handler', 'altstack', 'seed', 'zeropage',
    ]) {
      expect(info, k).toHaveProperty(k);
    }
    expect(Number(info.pid)).toBe(p.pid);
    expect(Number(info.anonsize)).toBe(4 << 20);
    expect(path.dirname(info.filepath)).toBe(dir);
    expect(fs.readFileSync(info.filepath).equals(Buffer.alloc(64 * 1024, 'F'))).toBe(true);

    // anon page 0: word i = i * golden ^ seed
    const anon = parseHex(info.anon);
    const seed = BigInt(info.seed);
    const page0 = readProcMem(p.pid, anon, 4096);
    for (let i = 0; i < 512; i++) {
      const want = ((BigInt(i) * 0x9e3779b97f4a7c15n) & MASK64) ^ seed;
      expect(page0.readBigUInt64LE(i * 8)).toBe(want);
    }
    expect(readProcMem(p.pid, parseHex(info.zeropage), 4096).equals(Buffer.alloc(4096))).toBe(true);
    expect(readProcMem(p.pid, anon + 3 * 4096, 4096).equals(Buffer.alloc(4096))).toBe(true); // untouched
    expect(readProcMem(p.pid, parseHex(info.shared), 65536).equals(Buffer.alloc(65536, 0xa5))).toBe(true);
    const file = readProcMem(p.pid, parseHex(info.file), 4 * 4096);
    expect(file.subarray(0, 4096).equals(Buffer.alloc(4096, 'F'))).toBe(true);
    expect(file.subarray(4096, 8192).equals(Buffer.alloc(4096, 'W'))).toBe(true);
    expect(readProcMem(p.pid, parseHex(info.ro), 16384).equals(Buffer.alloc(16384, 0x3c))).toBe(true);
    // /proc/PID/mem can read PROT_NONE memory too
    expect(readProcMem(p.pid, parseHex(info.prot_none), 16).equals(Buffer.alloc(16, 0x5a))).toBe(true);

    const maps = fs.readFileSync(`/proc/${p.pid}/maps`, 'utf8');
    expect(maps).toContain(info.filepath);

    let mark = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 5000, mark)).toBe('PASS');
    // a second check still passes (prot_none restored, handler reusable)
    mark = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 5000, mark)).toBe('PASS');

    writeProcMem(p.pid, anon + 8, Buffer.alloc(8, 0xff));
    mark = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 5000, mark)).toMatch(/^FAIL anon-page0\+0x8=/);

    p.closeStdin();
    expect(await p.exited).toEqual({ code: 0, signal: null });
  });
});

describe('counter', () => {
  it('reaches READY and keeps counting', async () => {
    const p = await startProcess(bins.counter, []);
    const addr = parseHex(p.readyInfo.counter);
    const first = await p.waitForLine(/^count=\d+/);
    const n1 = Number(first.split('=')[1]);
    const next = await p.waitForLine(/^count=\d+/, 5000, p.lines().length);
    expect(Number(next.split('=')[1])).toBeGreaterThan(n1);
    const v = readProcMem(p.pid, addr, 8).readBigUInt64LE(0);
    expect(v).toBeGreaterThanOrEqual(BigInt(n1));
  });
});

describe('fpu', () => {
  it('registers survive an ordinary blocking read', async () => {
    const p = await startProcess(bins.fpu, []);
    expect(p.readyLine).toBe(`READY pid=${p.pid}`);
    const mark = p.lines().length;
    p.writeLine('go');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 5000, mark)).toBe('PASS');
    await p.waitForLine(/^WAITING$/, 5000, mark);
    const mark2 = p.lines().length;
    p.closeStdin();
    expect(await p.waitForLine(/^(PASS|FAIL)/, 5000, mark2)).toBe('PASS');
    expect(await p.exited).toEqual({ code: 0, signal: null });
  });
});

describe('bigmem', () => {
  it('reaches READY with an address-dependent pattern and a stable checksum', async () => {
    const p = await startProcess(bins.bigmem, ['read', '16']);
    const { addr, size, sum } = p.readyInfo;
    expect(Number(size)).toBe(16 << 20);
    expect(sum).toMatch(/^0x[0-9a-f]{16}$/);
    // pattern(A) = mix(A ^ 0x6a09e667f3bcc909)
    const a = parseHex(addr) + 12345 * 8;
    let x = BigInt(a) ^ 0x6a09e667f3bcc909n;
    x ^= x >> 33n;
    x = (x * 0xff51afd7ed558ccdn) & MASK64;
    x ^= x >> 33n;
    expect(readProcMem(p.pid, a, 8).readBigUInt64LE(0)).toBe(x);

    const mark = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^sum=/, 5000, mark)).toBe(`sum=${sum}`);
    expect(await p.waitForLine(/^(PASS|FAIL)/, 5000, mark)).toBe('PASS');
    p.closeStdin();
    expect((await p.exited).code).toBe(0);
  });
});

describe('startProcess / waitForLine', () => {
  it('waitForLine sees earlier lines from index 0 and only newer ones from a mark', async () => {
    const p = await startPython(
      'import sys\nprint("READY a=1 b=x=y")\nfor l in sys.stdin:\n  print("echo", l.strip())',
    );
    expect(p.readyInfo).toEqual({ a: '1', b: 'x=y' });
    p.writeLine('one');
    expect(await p.waitForLine(/^echo/)).toBe('echo one');
    const mark = p.lines().length;
    const next = p.waitForLine(/^echo/, 5000, mark);
    p.writeLine('two');
    expect(await next).toBe('echo two');
    expect(await p.waitForLine(/^echo/, 5000, 0)).toBe('echo one');
    expect(p.lines()).toEqual(['READY a=1 b=x=y', 'echo one', 'echo two']);
  });

  it('rejects with the collected output when the program exits before READY', async () => {
    await expect(
      startPython('import sys\nprint("hello")\nprint("oops", file=sys.stderr)\nsys.exit(3)'),
    ).rejects.toThrow(/hello[\s\S]*oops[\s\S]*code=3/);
  });

  it('rejects on timeout and kills the process', async () => {
    const before = new Set(liveProcesses().map((r) => r.pid));
    // Long enough for python to start on a loaded machine and print its line.
    await expect(startPython('import time\nprint("not yet")\ntime.sleep(30)', [], { timeoutMs: 5000 })).rejects.toThrow(
      /timeout \(5000 ms\)[\s\S]*not yet/,
    );
    expect(liveProcesses().filter((r) => !before.has(r.pid))).toEqual([]);
  });

  it('waitForLine rejects when the process exits without a match', async () => {
    const p = await startPython('print("READY")\nprint("bye")');
    await expect(p.waitForLine(/never/, 5000)).rejects.toThrow(/exited before line[\s\S]*bye/);
  });
});

describe('kill', () => {
  it('leaves no process behind and can be called twice', async () => {
    const p = await startProcess(bins.memstate, ['sleep', '1'], { env: { TSNAP_FIXTURE_TMPDIR: tmpDir('tsnap-k-') } });
    expect(procGone(p.pid)).toBe(false);
    await p.kill();
    expect(procGone(p.pid)).toBe(true);
    expect(await p.exited).toEqual({ code: null, signal: 'SIGKILL' });
    await p.kill();
    expect(p.alive()).toBe(false);
  });

  it('works when the process already exited', async () => {
    const p = await startPython('print("READY")');
    await p.exited;
    await p.kill();
    expect(procGone(p.pid)).toBe(true);
  });

  it('works on a SIGSTOPped process', async () => {
    const p = await startProcess(bins.counter, []);
    process.kill(p.pid, 'SIGSTOP');
    await p.kill();
    expect(procGone(p.pid)).toBe(true);
  });

  it('works on a ptrace-stopped process', async () => {
    const target = await startProcess(bins.bigmem, ['pause', '1']);
    const tracer = await startPython(
      [
        'import ctypes, os, sys',
        'libc = ctypes.CDLL(None, use_errno=True)',
        'libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]',
        'pid = int(sys.argv[1])',
        'if libc.ptrace(16, pid, None, None) != 0: sys.exit("PTRACE_ATTACH errno %d" % ctypes.get_errno())',
        'os.waitpid(pid, 0)',
        'print("READY attached")',
        'while True:',
        '  _, st = os.waitpid(pid, 0)',
        '  if os.WIFEXITED(st) or os.WIFSIGNALED(st): break',
        'print("DONE")',
      ].join('\n'),
      [String(target.pid)],
    );
    const status = fs.readFileSync(`/proc/${target.pid}/status`, 'utf8');
    expect(status).toMatch(/^State:\s+t \(tracing stop\)/m);
    expect(status).toMatch(new RegExp(`^TracerPid:\\s+${tracer.pid}$`, 'm'));
    await target.kill();
    expect(procGone(target.pid)).toBe(true);
    await tracer.waitForLine(/^DONE$/);
  });
});

describe('useProcessCleanup', () => {
  let pids: number[] = [];
  it('starts processes and leaves them running', async () => {
    const a = await startProcess(bins.counter, []);
    const b = await startPython('import time\nprint("READY")\ntime.sleep(60)');
    pids = [a.pid, b.pid];
    expect(liveProcesses().map((r) => r.pid)).toEqual(expect.arrayContaining(pids));
  });

  it('afterEach(killAll) killed them', () => {
    expect(pids).toHaveLength(2);
    for (const pid of pids) expect(procGone(pid)).toBe(true);
    expect(liveProcesses()).toEqual([]);
  });

  it('killAll is a no-op when nothing is running', async () => {
    await killAll();
  });
});

/**
 * Dump, kill, restore: the restored process continues where it stopped and
 * checks its own state (memory checksums, registers, signal state), printing
 * PASS or FAIL. tsnap's own report is never the evidence.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { readFileSync, readlinkSync, writeFileSync, appendFileSync, existsSync, rmSync } from 'node:fs';
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import {
  compileC, startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running,
} from './helpers/fixtures.js';
import { tsnap, restoreDetached, killPid, readImage, TSNAP_BIN, type Restored } from './helpers/tsnap.js';
import { waitPidsFree, leftRestoreHelpers } from './helpers/processes.js';
import { readMaps } from '../src/proc/index.js';
import { ExitCode } from '../src/errors.js';
import { readMetaFile, writeMetaFile } from '../src/image/metadata.js';
import { FileKind, type ProcessImage, type Inventory } from '../formats/schema.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

async function dumpAndKill(p: Running, dir: string, extra: string[] = []): Promise<void> {
  const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, ...extra);
  expect(r.code, r.stderr).toBe(0);
  await p.exited; // reaped by the harness: the pid is free again
}

function procView(pid: number) {
  return {
    cmdline: readFileSync(`/proc/${pid}/cmdline`),
    environ: readFileSync(`/proc/${pid}/environ`),
    exe: readlinkSync(`/proc/${pid}/exe`),
    cwd: readlinkSync(`/proc/${pid}/cwd`),
    auxv: readFileSync(`/proc/${pid}/auxv`),
    umask: /Umask:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1],
    comm: readFileSync(`/proc/${pid}/comm`, 'utf8'),
  };
}

/**
 * The memory map, with adjacent areas that differ in nothing but a boundary
 * joined: the kernel merges such areas when they are re-created, and whether
 * it had merged them originally depends on their history (anon_vma), not on
 * anything the program can observe.
 */
function mapsKey(pid: number): string[] {
  const out: { start: number; end: number; prot: number; shared: boolean; offset: number; inode: number; path: string }[] = [];
  for (const v of readMaps(pid)) {
    const last = out[out.length - 1];
    if (last && last.end === v.start && last.prot === v.prot && last.shared === v.shared && last.inode === v.inode
      && last.path === v.path && (v.inode === 0 || last.offset + (last.end - last.start) === v.offset)) {
      last.end = v.end;
      continue;
    }
    out.push({ ...v });
  }
  return out.map((v) => `${v.start.toString(16)}-${v.end.toString(16)} ${v.prot} ${v.shared} ${v.offset} ${v.inode} ${v.path}`);
}

describe('tsnap restore', () => {
  it('a counter keeps counting from where it stopped, with the same pid, log offsets and O_APPEND', async () => {
    const work = tmpDir('tsnap-restore-');
    const log = join(work, 'log');
    const journal = join(work, 'journal');
    const p = await startProcess(await compileC('logcounter'), [log, journal], { cwd: work });
    await p.waitForLine(/^count=5$/);
    const dir = join(work, 'img');
    const before = procView(p.pid);
    const mapsBefore = mapsKey(p.pid);
    await dumpAndKill(p, dir);
    const last = Number(/count=(\d+)/.exec(readFileSync(journal, 'utf8').trim().split('\n').pop()!)![1]);
    // Someone else appends to the log meanwhile: O_APPEND must put our next lines after it.
    appendFileSync(log, 'other writer\n');

    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.pid).toBe(p.pid);
    await r.waitForLine(new RegExp(`^count=${last + 3}$`));
    // tsnap --detach reports on the stdout it shares with the process: whose line comes first is a race.
    expect(r.lines.find((l) => l.startsWith('count='))).toBe(`count=${last + 1}`);

    // Same cmdline, environ, exe, cwd, auxv, umask, comm; same memory map but for the vdso/vvar contents.
    expect(procView(r.pid)).toEqual(before);
    expect(readlinkSync(`/proc/${r.pid}/fd/9`)).toBe('/dev/null');
    expect(mapsKey(r.pid)).toEqual(mapsBefore);

    await killPid(r.pid);
    const logLines = readFileSync(log, 'utf8').trim().split('\n');
    const journalLines = readFileSync(journal, 'utf8').trim().split('\n');
    const other = logLines.indexOf('other writer');
    expect(other).toBe(last);
    const counted = logLines.filter((l) => l !== 'other writer');
    counted.forEach((l, i) => expect(l).toBe(`count=${i + 1}`));
    journalLines.forEach((l, i) => expect(l).toBe(`count=${i + 1}`));
    expect(journalLines.length).toBeGreaterThan(last + 2);
  });

  it('a 256 MiB pattern is checksummed intact by the restored process', async () => {
    const work = tmpDir('tsnap-restore-');
    const p = await startProcess(await compileC('bigmem'), ['read', '256']);
    const sum = p.readyInfo.sum;
    const dir = join(work, 'img');
    await dumpAndKill(p, dir, ['--compress', 'lz4']);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('');
    expect(await r.waitForLine(/^sum=/, 20_000)).toBe(`sum=${sum}`);
    expect(await r.waitForLine(/^(PASS|FAIL)/, 20_000)).toBe('PASS');
  });

  it('PROT_NONE and read-only regions, SIGSEGV handler on its altstack, blocked and ignored signals, umask survive', async () => {
    const work = tmpDir('tsnap-restore-');
    const p = await startProcess(await compileC('memstate'), ['read', '4'], { env: { TSNAP_FIXTURE_TMPDIR: work } });
    const dir = join(work, 'img');
    await dumpAndKill(p, dir);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('check');
    expect(await r.waitForLine(/^(PASS|FAIL)/, 10_000)).toBe('PASS');
    // Blocked SIGUSR1 stays pending, ignored SIGUSR2 does nothing: the process lives on.
    process.kill(r.pid, 'SIGUSR1');
    process.kill(r.pid, 'SIGUSR2');
    const n = r.lines.length;
    r.writeLine('check');
    expect(await r.waitForLine(/^(PASS|FAIL)/, 10_000, n)).toBe('PASS');
    expect(readFileSync(`/proc/${r.pid}/status`, 'utf8')).toMatch(/ShdPnd:\s+0*200\n/);
  });

  it('x87, SSE and AVX registers mid-computation', async () => {
    const work = tmpDir('tsnap-restore-');
    const p = await startProcess(await compileC('fpu'), ['read']);
    const dir = join(work, 'img');
    await dumpAndKill(p, dir);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('x');
    expect(await r.waitForLine(/^(PASS|FAIL)/, 5000)).toBe('PASS');
  });

  it('a process dumped in a futex wait re-enters it; vdso clocks work', async () => {
    const work = tmpDir('tsnap-restore-');
    const p = await startProcess(await compileC('waits'), []);
    await p.waitForLine(/^tick=2 /);
    // The thread spends all but a few microseconds of each 100 ms inside
    // futex(), but on a loaded machine it can sit runnable past its timeout,
    // and the freeze then finds it in user code between two waits (2 of 30
    // dumps at load 5): that image is restored too, must run on, and its
    // process is dumped again until a dump catches it in the wait.
    let r: Restored | null = null;
    for (let attempt = 1; ; attempt++) {
      const dir = join(work, `img${attempt}`);
      if (r === null) await dumpAndKill(p, dir);
      else {
        const d = await tsnap('dump', '--pid', String(r.pid), '--dir', dir);
        expect(d.code, d.stderr).toBe(0);
        await waitPidsFree([r.pid], 10_000); // init reaps the restored process late
      }
      const inFutex = readImage(dir).process!.threads[0].syscallRestart?.nr === 202;
      r = await restoreDetached(dir, join(work, `pid${attempt}`));
      expect(r.result.code, r.result.stderr).toBe(0);
      expect(r.pid).toBe(p.pid);
      if (inFutex) break;
      expect(attempt, 'no dump caught the thread inside futex()').toBeLessThan(8);
      await r.waitForLine(/^tick=/, 5000);
    }
    const line = await r.waitForLine(/^tick=/, 5000);
    const n = r.lines.length;
    const m = /real=(\d+) mono=(\d+) tod=(\d+)/.exec(line)!;
    const now = Date.now() / 1000;
    expect(Math.abs(Number(m[1]) - now)).toBeLessThan(5);
    expect(Math.abs(Number(m[3]) - now)).toBeLessThan(5);
    expect(Number(m[2])).toBeGreaterThan(0);
    await r.waitForLine(/^tick=/, 5000, n);
  });

  it('a python3 interpreter with dicts in memory continues; a SIGUSR1 handler still runs', async () => {
    const work = tmpDir('tsnap-restore-');
    const script = [
      'import signal, sys',
      'signal.signal(signal.SIGUSR1, lambda s, f: print("GOT USR1", flush=True))',
      'd = {i: str(i) * 7 for i in range(200000)}',
      'print("READY", flush=True)',
      'for line in sys.stdin:',
      '    print("PASS" if all(d[i] == str(i) * 7 for i in range(200000)) else "FAIL", flush=True)',
    ].join('\n');
    const p = await startPython(script);
    const dir = join(work, 'img');
    await dumpAndKill(p, dir);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('go');
    expect(await r.waitForLine(/^(PASS|FAIL)/, 10_000)).toBe('PASS');
    process.kill(r.pid, 'SIGUSR1');
    await r.waitForLine(/^GOT USR1$/, 5000);
  });
});

describe('signal actions', () => {
  it('ignored and caught signals are as before, SIGTRAP ignored and glibc\'s own 32 and 33 at their default included', async () => {
    // SIGTRAP: every int3 ending a remote step resets an ignored forced signal to SIG_DFL. 32, 33:
    // glibc's posix_spawn sets the ones its caller handles to SIG_IGN before the helper's exec.
    const work = tmpDir('tsnap-restore-');
    const p = await startPython(`
import signal, sys
signal.signal(signal.SIGTRAP, signal.SIG_IGN)
signal.signal(signal.SIGUSR2, signal.SIG_IGN)
signal.signal(signal.SIGHUP, lambda s, f: None)
print('READY', flush=True)
for line in sys.stdin:
    print('UP', flush=True)
`);
    const dispositions = (pid: number) => readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').filter((l) => /^Sig(Ign|Cgt):/.test(l));
    const before = dispositions(p.pid);
    expect(before.find((l) => l.startsWith('SigIgn'))).toMatch(/[13579bdf][0-9a-f]$/); // SIGTRAP (bit 4) ignored
    const dir = join(work, 'img');
    await dumpAndKill(p, dir);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('');
    await r.waitForLine(/^UP/);
    expect(dispositions(r.pid)).toEqual(before);
  });
});

describe('timers', () => {
  it('an interval timer (setitimer) keeps firing after restore, with its period', async () => {
    const work = tmpDir('tsnap-restore-');
    const p = await startPython(`
import signal, sys
n = 0
def tick(s, f):
    global n
    n += 1
signal.signal(signal.SIGALRM, tick)
signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
print('READY', flush=True)
for line in sys.stdin:
    print('TICKS %d %.2f' % (n, signal.getitimer(signal.ITIMER_REAL)[1]), flush=True)
`);
    const dir = join(work, 'img');
    await dumpAndKill(p, dir);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('');
    const a = /TICKS (\d+) ([\d.]+)/.exec(await r.waitForLine(/^TICKS/))!;
    await new Promise((res) => setTimeout(res, 300));
    const mark = r.lines.length;
    r.writeLine('');
    const b = /TICKS (\d+) ([\d.]+)/.exec(await r.waitForLine(/^TICKS/, 5000, mark))!;
    expect(a[2]).toBe('0.05');
    expect(Number(b[1])).toBeGreaterThan(Number(a[1]) + 2);
  });

  it('a periodic interval timer that expired with its SIGALRM pending (blocked) goes on once the signal is taken', async () => {
    // The kernel re-arms a periodic ITIMER_REAL only as its SIGALRM is taken: while the signal waits
    // (blocked here; in any frozen process, for the dump's length) the timer reads 0 left.
    const work = tmpDir('tsnap-restore-');
    const p = await startPython(`
import signal, sys, time
n = 0
def tick(s, f):
    global n
    n += 1
signal.signal(signal.SIGALRM, tick)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
signal.setitimer(signal.ITIMER_REAL, 0.02, 0.05)
while signal.SIGALRM not in signal.sigpending(): time.sleep(0.01)
print('READY left=%.3f' % signal.getitimer(signal.ITIMER_REAL)[0], flush=True)
for line in sys.stdin:
    if line.strip() == 'unblock': signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGALRM])
    print('TICKS %d %.2f' % (n, signal.getitimer(signal.ITIMER_REAL)[1]), flush=True)
`);
    expect(p.readyInfo.left).toBe('0.000');
    const dir = join(work, 'img');
    await dumpAndKill(p, dir);
    expect(readImage(dir).process!.itimers).toEqual([{ which: 0, valueUs: 0, intervalUs: 50_000 }]);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('unblock');
    const a = /TICKS (\d+) ([\d.]+)/.exec(await r.waitForLine(/^TICKS/))!;
    // The pending SIGALRM, then one every 50 ms.
    let b = a;
    for (let i = 0; i < 100 && Number(b[1]) < 4; i++) {
      await new Promise((res) => setTimeout(res, 100));
      const mark = r.lines.length;
      r.writeLine('');
      b = /TICKS (\d+) ([\d.]+)/.exec(await r.waitForLine(/^TICKS/, 5000, mark))!;
    }
    expect(a[2]).toBe('0.05');
    expect(Number(b[1])).toBeGreaterThanOrEqual(4);
  });

  it('a POSIX timer (timer_create) comes back with its id, signal and period, and keeps firing', async () => {
    const work = tmpDir('tsnap-restore-');
    const p = await startPython(`
import ctypes, signal, sys
l = ctypes.CDLL(None)
n = 0
def tick(s, f):
    global n
    n += 1
signal.signal(signal.SIGUSR1, tick)
class SigEvent(ctypes.Structure):
    _fields_ = [('value', ctypes.c_uint64), ('signo', ctypes.c_int), ('notify', ctypes.c_int), ('pad', ctypes.c_byte * 48)]
class Its(ctypes.Structure):
    _fields_ = [('i_s', ctypes.c_long), ('i_ns', ctypes.c_long), ('v_s', ctypes.c_long), ('v_ns', ctypes.c_long)]
spare = ctypes.c_void_p()
assert l.timer_create(1, None, ctypes.byref(spare)) == 0  # id 0, disarmed
tid = ctypes.c_void_p()
assert l.timer_create(1, ctypes.byref(SigEvent(99, signal.SIGUSR1, 0)), ctypes.byref(tid)) == 0
assert l.timer_settime(tid, 0, ctypes.byref(Its(0, 50000000, 0, 50000000)), None) == 0
print('READY', flush=True)
for line in sys.stdin:
    cur = Its()
    l.timer_gettime(tid, ctypes.byref(cur))
    print('TICKS %d id=%d interval=%d' % (n, tid.value or 0, cur.i_ns), flush=True)
`);
    const dir = join(work, 'img');
    await dumpAndKill(p, dir);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('');
    const first = await r.waitForLine(/^TICKS/);
    await new Promise((res) => setTimeout(res, 300));
    const mark = r.lines.length;
    r.writeLine('');
    const second = await r.waitForLine(/^TICKS/, 5000, mark);
    const parse = (l: string) => /TICKS (\d+) id=(\d+) interval=(\d+)/.exec(l)!.slice(1).map(Number);
    const [n1, id1, iv1] = parse(first);
    const [n2, id2] = parse(second);
    expect(id1).toBe(1);
    expect(id2).toBe(1);
    expect(iv1).toBe(50_000_000);
    expect(n2).toBeGreaterThan(n1 + 2);
    const timers = readFileSync(`/proc/${r.pid}/timers`, 'utf8');
    expect(timers).toMatch(/ID: 0\n/);
    expect(timers).toMatch(/ID: 1\nsignal: 10\/0+63\n/);
  });

});

describe('pids', () => {
  it('a taken pid is refused naming its holder; --new-pid runs a second copy next to the original', async () => {
    const work = tmpDir('tsnap-restore-');
    const p = await startProcess(await compileC('counter'), []);
    const dir = join(work, 'img');
    expect((await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--leave-running')).code).toBe(0);
    const taken = await tsnap('restore', '--dir', dir, '--detach');
    expect(taken.code).toBe(ExitCode.pidTaken);
    expect(taken.stderr).toContain(`pid ${p.pid} is in use by "counter`);
    expect(taken.stderr).toContain('--new-pid');

    const r = await restoreDetached(dir, join(work, 'pid'), ['--new-pid']);
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.pid).not.toBe(p.pid);
    await r.waitForLine(/^count=/, 5000);
    const n = p.lines().length;
    await p.waitForLine(/^count=/, 5000, n); // the original runs on too
  });
});

describe('restore failures: a clear error and nothing left running', () => {

  it('corrupted chunk, truncated pages, wrong version, missing mapped file', async () => {
    const work = tmpDir('tsnap-restore-');
    const fileCopy = join(work, 'mapped');
    const p = await startProcess(await compileC('memstate'), ['read', '1'], { env: { TSNAP_FIXTURE_TMPDIR: work } });
    const dir = join(work, 'img');
    await dumpAndKill(p, dir);
    const clone = (name: string) => {
      const d = join(work, name);
      execFileSync('cp', ['-a', dir, d]);
      return d;
    };
    const corrupt = clone('corrupt');
    execFileSync('python3', ['-c', `f=open('${corrupt}/pages','r+b'); f.seek(40); b=f.read(1); f.seek(40); f.write(bytes([b[0]^0xff]))`]);
    const trunc = clone('trunc');
    execFileSync('truncate', ['-s', '5000', join(trunc, 'pages')]);
    const ver = clone('ver');
    execFileSync('python3', ['-c', `f=open('${ver}/inventory','r+b'); f.seek(8); f.write(bytes([3,0]))`]);

    const cases: [string, number, RegExp][] = [
      [corrupt, ExitCode.badImage, /pages: chunk \d+ checksum mismatch/],
      [trunc, ExitCode.badImage, /pages: truncated/],
      [ver, ExitCode.badImage, /inventory: image format version 3 is newer/],
    ];
    for (const [d, code, msg] of cases) {
      const r = await tsnap('restore', '--dir', d, '--detach');
      expect(r.code, r.stderr).toBe(code);
      expect(r.stderr).toMatch(msg);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(existsSync(`/proc/${p.pid}`)).toBe(false);
    }
    // The private file mapping's file is gone.
    const mapped = readImage(dir).process!.mm.vmas.find((v) => v.path.includes('tsnap-memstate-'))!.path;
    writeFileSync(fileCopy, readFileSync(mapped));
    rmSync(mapped);
    const r = await tsnap('restore', '--dir', dir, '--detach');
    expect(r.code).toBe(ExitCode.restoreFailed);
    expect(r.stderr).toContain(`mapped file ${mapped} is missing`);
    expect(existsSync(`/proc/${p.pid}`)).toBe(false);
    expect(await leftRestoreHelpers()).toEqual([]);
  });
});

describe('stdio and fds', () => {
  it('--stdout gives the restored process a file instead of tsnap\'s stdout', async () => {
    const work = tmpDir('tsnap-restore-');
    const p = await startProcess(await compileC('counter'), []);
    const dir = join(work, 'img');
    await dumpAndKill(p, dir);
    const out = join(work, 'out.txt');
    // With both set, the restored process holds none of the test's pipes.
    const r = await tsnap('restore', '--dir', dir, '--detach', '--pidfile', join(work, 'pid'), '--stdout', out, '--stderr', join(work, 'err.txt'));
    expect(r.code, r.stderr).toBe(0);
    const pid = Number(readFileSync(join(work, 'pid'), 'utf8'));
    try {
      for (let i = 0; i < 200 && !/count=\d+\n.*count=/s.test(existsSync(out) ? readFileSync(out, 'utf8') : ''); i++) await new Promise((res) => setTimeout(res, 10));
      expect(readFileSync(out, 'utf8')).toMatch(/count=\d+\n.*count=/s);
      expect(readlinkSync(`/proc/${pid}/fd/1`)).toBe(out);
    } finally {
      await killPid(pid);
    }
  });

  /** A crafted process file, recorded in the inventory as a writer would (else it is refused as not this image's). */
  function rewriteProcess(dir: string, proc: ProcessImage): void {
    rmSync(join(dir, 'process'));
    const written = writeMetaFile(dir, FileKind.Process, proc);
    const inv = readMetaFile<Inventory>(dir, FileKind.Inventory);
    inv.files.process = written;
    rmSync(join(dir, 'inventory'));
    writeMetaFile(dir, FileKind.Inventory, inv);
  }

  it('an fd kind restore does not support is refused before anything is created, naming the fd and its kind', async () => {
    const work = tmpDir('tsnap-restore-');
    const p = await startProcess(await compileC('counter'), []);
    const dir = join(work, 'img');
    await dumpAndKill(p, dir);
    // An image from a future tsnap with a kind this one does not know.
    const proc = readMetaFile<ProcessImage>(dir, FileKind.Process);
    proc.fds.push({ fd: 7, kind: 'anon_inode', link: 'anon_inode:inotify', path: null, flags: 0, pos: 0, file: null });
    rewriteProcess(dir, proc);
    const r = await tsnap('restore', '--dir', dir, '--detach');
    expect(r.code).toBe(ExitCode.unsupported);
    expect(r.stderr).toMatch(/fd 7 is a anon_inode \(anon_inode:inotify\)/);
    expect(existsSync(`/proc/${p.pid}`)).toBe(false);
  });

  it('a failure after the process exists kills it: nothing half-built stays', async () => {
    const work = tmpDir('tsnap-restore-');
    const p = await startProcess(await compileC('counter'), []);
    const dir = join(work, 'img');
    await dumpAndKill(p, dir);
    // The image claims another vdso size than this kernel's: found only once the
    // new process is being built.
    const proc = readMetaFile<ProcessImage>(dir, FileKind.Process);
    const vdso = proc.mm.vmas.find((v) => v.special === 'vdso')!;
    // Smaller, not larger: its neighbours are adjacent, and VMAs that
    // overlap are refused as a bad image before anything is built.
    expect(vdso.end - vdso.start).toBeGreaterThan(4096);
    vdso.end -= 4096;
    rewriteProcess(dir, proc);
    const r = await tsnap('restore', '--dir', dir, '--detach');
    expect(r.code, r.stderr).toBe(ExitCode.kernel);
    expect(r.stderr).toMatch(/\[vdso\] of this kernel is \d+ bytes, the image's \d+/);
    expect(existsSync(`/proc/${p.pid}`)).toBe(false);
    expect(await leftRestoreHelpers()).toEqual([]);
  });
});

describe('foreground restore', () => {
  it('waits for the process, exits with its status, forwards SIGTERM; a hard limit it cannot raise is a warning', async () => {
    const work = tmpDir('tsnap-restore-');
    const p = await startProcess(await compileC('counter'), []);
    const dir = join(work, 'img');
    await dumpAndKill(p, dir);
    // tsnap restore runs with a lower hard NOFILE limit than the dumped process had.
    const child = spawn('prlimit', ['--nofile=256:256', process.execPath, TSNAP_BIN, 'restore', '--dir', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => { out += d; });
    child.stderr!.on('data', (d) => { err += d; });
    const code = new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
    while (!/count=\d+\n.*count=/s.test(out)) await new Promise((r) => setTimeout(r, 20));
    expect(existsSync(`/proc/${p.pid}`)).toBe(true); // the original pid, running in the foreground
    child.kill('SIGTERM'); // prlimit execs node: this is tsnap itself
    expect(await code).toBe(128 + 15);
    expect(err).toMatch(/warning: rlimit Max open files: hard limit \d+ cannot be restored/);
    expect(err).toMatch(/restored process \d+ from/);
    await waitPidsFree([p.pid]);
    expect(existsSync(`/proc/${p.pid}`)).toBe(false);
  });
});

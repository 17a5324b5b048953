/**
 * Full dumps of real processes. Each image is checked against the process
 * itself: page bytes against /proc/PID/mem, registers against our own ptrace
 * reads, VMAs against /proc/PID/maps, and the process must run on unharmed
 * (it checks its own memory) after --leave-running.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, statSync, readdirSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import {
  compileC, startProcess, startPython, useProcessCleanup, readProcMem, tmpDir, cleanupTmpDirs, parseHex,
} from './helpers/fixtures.js';
import { tsnap, startTsnap, storedPages, storedPageSet, readImage } from './helpers/tsnap.js';
import { readMaps, readStatus } from '../src/proc/index.js';
import { ptrace, WaitStatus, PTRACE_EVENT_STOP } from '../src/sys/index.js';
import { ExitCode } from '../src/errors.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const PAGE = 4096;

/**
 * Every thread of the process runs on, traced by nobody: not stopped ('T',
 * 't'). A thread of a busy process may briefly be in 'D' (creating or
 * ending a thread) or 'Z' (just ended): that is running, not frozen.
 */
function expectRunningUntraced(pid: number): void {
  for (const tid of readdirSync(`/proc/${pid}/task`).map(Number)) {
    let st;
    try { st = readStatus(tid); } catch { continue; } // a thread that just ended
    expect(st.tracerPid, `thread ${tid}`).toBe(0);
    expect(['T', 't'], `thread ${tid}`).not.toContain(st.state);
  }
}

/**
 * Every stored page equals the live process's memory (which is quiescent).
 * The one exception is the rseq area: the kernel itself rewrites its cpu_id
 * fields whenever the resumed process lands on another CPU.
 */
function expectPagesMatch(pid: number, dir: string): number {
  const img = readImage(dir);
  const rseq = img.process!.threads[0].rseq;
  const maskRseq = (addr: number, buf: Buffer) => {
    if (!rseq) return;
    const from = Number(rseq.pointer) - addr;
    if (from + rseq.size > 0 && from < buf.length) buf.fill(0, Math.max(0, from), Math.min(buf.length, from + rseq.size));
  };
  let pages = 0;
  for (const stored of storedPages(img)) {
    const addr = stored.addr;
    const data = Buffer.from(stored.data);
    const live = readProcMem(pid, addr, data.length);
    maskRseq(addr, data);
    maskRseq(addr, live);
    if (!live.equals(data)) {
      for (let o = 0; o < data.length; o += PAGE) {
        expect(live.subarray(o, o + PAGE).equals(data.subarray(o, o + PAGE)), `page 0x${(addr + o).toString(16)}`).toBe(true);
      }
    }
    pages += data.length / PAGE;
  }
  return pages;
}

/** Stops the process ourselves and reads what the dump should have recorded. */
function ptraceSnapshot(pid: number): { regs: Buffer; xstate: Buffer; sigmask: bigint } {
  ptrace.seize(pid, 0);
  try {
    ptrace.interrupt(pid);
    for (;;) {
      const w = ptrace.waitpidBlocking(pid);
      if (WaitStatus.stopped(w.status) && WaitStatus.event(w.status) === PTRACE_EVENT_STOP) break;
    }
    return { regs: ptrace.getRegs(pid), xstate: ptrace.getXstate(pid), sigmask: ptrace.getSigmask(pid) };
  } finally {
    ptrace.detach(pid);
  }
}

describe('tsnap dump', () => {
  it('stores exactly the written memory of a varied process and leaves it running unharmed', async () => {
    const bin = await compileC('memstate');
    const work = tmpDir('tsnap-dump-');
    const p = await startProcess(bin, ['read', '4'], { env: { TSNAP_FIXTURE_TMPDIR: work } });
    const info = p.readyInfo;
    const dir = join(work, 'img');
    const mapsBefore = readMaps(p.pid);

    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--json');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.killed).toBe(false);
    expectRunningUntraced(p.pid);

    // Files 0600 in a 0700 directory.
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    for (const f of readdirSync(dir)) expect(statSync(join(dir, f)).mode & 0o777).toBe(0o600);

    const img = readImage(dir);
    const stored = storedPageSet(img);
    const anon = parseHex(info.anon);
    const anonPages = Number(info.anonsize) / PAGE;
    for (let pg = 0; pg < anonPages; pg++) {
      const want = pg % 4 !== 3 && pg !== 1; // untouched and zero-page-only pages are not stored
      expect(stored.has(anon + pg * PAGE), `anon page ${pg}`).toBe(want);
    }
    const shared = parseHex(info.shared);
    for (let o = 0; o < Number(info.sharedsize); o += PAGE) expect(stored.has(shared + o), 'shared anon page').toBe(true);
    const file = parseHex(info.file);
    for (let pg = 0; pg < Number(info.filesize) / PAGE; pg++) {
      expect(stored.has(file + pg * PAGE), `private file page ${pg}`).toBe(pg === 1 || pg === 3);
    }
    const protNone = parseHex(info.prot_none);
    for (let o = 0; o < Number(info.prot_nonesize); o += PAGE) expect(stored.has(protNone + o), 'PROT_NONE page').toBe(true);
    expect(img.stats!.pagesSlowPath).toBeGreaterThanOrEqual(Number(info.prot_nonesize) / PAGE);

    // Bytes: every stored page equals the live memory.
    const n = expectPagesMatch(p.pid, dir);
    expect(n).toBe(img.stats!.pagesWritten);

    // VMAs equal /proc maps (before and after: the dump left no mapping behind).
    const mapsAfter = readMaps(p.pid);
    expect(mapsAfter).toEqual(mapsBefore);
    const strip = (v: { start: number; end: number; prot: number; shared: boolean; path: string }) =>
      ({ start: v.start, end: v.end, prot: v.prot, shared: v.shared, path: v.path });
    expect(img.process!.mm.vmas.map(strip)).toEqual(mapsBefore.map(strip));
    const fileVma = img.process!.mm.vmas.find((v) => v.start === file)!;
    expect(fileVma.path).toBe(info.filepath);
    expect(fileVma.file?.ino).toBe(statSync(info.filepath).ino);

    // Signal state: SIGSEGV handler on the altstack, SIGUSR1 blocked, SIGUSR2 ignored, umask.
    const segv = img.process!.signals.actions.find((a) => a.signo === 11)!;
    expect(segv.handler).toBe(BigInt(parseHex(info.handler)));
    expect(segv.flags & 0x08000000n).toBe(0x08000000n); // SA_ONSTACK
    expect(img.process!.signals.actions.find((a) => a.signo === 12)!.handler).toBe(1n); // SIG_IGN
    const t = img.process!.threads[0];
    expect(t.sigmask & (1n << 9n)).toBe(1n << 9n);
    expect(t.sigaltstack.sp).toBe(BigInt(parseHex(info.altstack)));
    expect(t.sigaltstack.size).toBe(BigInt(info.altstacksize));
    expect(img.process!.umask).toBe(0o027);
    expect(t.syscallRestart).toEqual({ nr: 0, code: 512 }); // read() -> ERESTARTSYS

    // Registers and xsave equal a ptrace read of the (still blocked) process.
    const snap = ptraceSnapshot(p.pid);
    expect(t.regs.equals(snap.regs)).toBe(true);
    expect(t.xstate.equals(snap.xstate)).toBe(true);
    expect(t.sigmask).toBe(snap.sigmask);

    // The process itself finds its memory, handler, mask and umask intact.
    const before = p.lines().length;
    p.writeLine('check');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000, before)).toBe('PASS');
  });

  it('kills the target by default after a complete image', async () => {
    const bin = await compileC('memstate');
    const work = tmpDir('tsnap-dump-');
    const p = await startProcess(bin, ['sleep', '1'], { env: { TSNAP_FIXTURE_TMPDIR: work } });
    const dir = join(work, 'img');
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/killed/);
    const exit = await p.exited;
    expect(exit.signal).toBe('SIGKILL');
    expect(readImage(dir).inventory.kind).toBe('full');
    // nanosleep is recorded for restart (ERESTART_RESTARTBLOCK, or ERESTARTNOHAND for clock_nanosleep)
    expect(readImage(dir).process!.threads[0].syscallRestart).not.toBeNull();
  });

  it('dumps a 256 MiB region with lz4 and every page matches', async () => {
    const bin = await compileC('bigmem');
    const work = tmpDir('tsnap-dump-');
    const p = await startProcess(bin, ['read', '256']);
    const dir = join(work, 'img');
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--leave-running', '--compress', 'lz4');
    expect(r.code, r.stderr).toBe(0);
    const img = readImage(dir);
    expect(img.inventory.compression).toBe('lz4');
    const addr = parseHex(p.readyInfo.addr);
    const stored = storedPageSet(img);
    for (let o = 0; o < 256 << 20; o += PAGE) if (!stored.has(addr + o)) throw new Error(`page 0x${(addr + o).toString(16)} missing`);
    expectPagesMatch(p.pid, dir);
    const before = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 20_000, before)).toBe('PASS');
  });

  it('keeps a sleeping counter counting after --leave-running (nanosleep restarted)', async () => {
    const bin = await compileC('counter');
    const work = tmpDir('tsnap-dump-');
    const p = await startProcess(bin, []);
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--leave-running');
    expect(r.code, r.stderr).toBe(0);
    const n = p.lines().length;
    await p.waitForLine(/^count=/, 5000, n);
    await p.waitForLine(/^count=/, 5000, n + 1);
    expectRunningUntraced(p.pid);
  });

  it('dumps a python3 interpreter', async () => {
    const work = tmpDir('tsnap-dump-');
    const p = await startPython('import sys,time\nd={i: str(i)*10 for i in range(100000)}\nprint("READY", flush=True)\nsys.stdin.readline()\nprint("PASS" if all(d[i]==str(i)*10 for i in range(100000)) else "FAIL", flush=True)\n');
    const dir = join(work, 'img');
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--leave-running');
    expect(r.code, r.stderr).toBe(0);
    expectPagesMatch(p.pid, dir);
    const show = await tsnap('show', dir);
    expect(show.code).toBe(0);
    expect(show.stdout).toMatch(/python3/);
    const json = JSON.parse((await tsnap('show', dir, '--json')).stdout);
    expect(json.process.pid).toBe(p.pid);
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000)).toBe('PASS');
  });
});

describe('tsnap dump failures leave the target untouched', () => {
  it('unknown pid: distinct exit code, no image', async () => {
    const work = tmpDir('tsnap-dump-');
    const r = await tsnap('dump', '--pid', '4194000', '--dir', join(work, 'img'));
    expect(r.code).toBe(ExitCode.noSuchProcess);
    expect(r.stderr).toMatch(/no process with pid 4194000/);
    expect(existsSync(join(work, 'img'))).toBe(false);
  });

  it('a pid already traced by another tracer is refused, naming the tracer', async () => {
    const p = await startProcess(await compileC('counter'), []);
    const work = tmpDir('tsnap-dump-');
    ptrace.seize(p.pid, 0);
    try {
      const r = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
      expect(r.code).toBe(ExitCode.permission);
      expect(r.stderr).toContain(`already traced by pid ${process.pid}`);
    } finally {
      // PTRACE_DETACH needs the tracee in a stop.
      ptrace.interrupt(p.pid);
      ptrace.waitpidBlocking(p.pid);
      ptrace.detach(p.pid);
    }
    expectRunningUntraced(p.pid);
  });

  it('a directory that exists and is not empty is refused and kept', async () => {
    const p = await startProcess(await compileC('counter'), []);
    const work = tmpDir('tsnap-dump-');
    writeFileSync(join(work, 'precious'), 'keep me');
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', work);
    expect(r.code).toBe(ExitCode.imageDir);
    expect(r.stderr).toMatch(/not empty/);
    expect(readdirSync(work)).toEqual(['precious']);
    expectRunningUntraced(p.pid);
  });

  it('a thread id is refused with the process to dump instead', async () => {
    const work = tmpDir('tsnap-dump-');
    const p = await startPython('import threading,time\nthreading.Thread(target=time.sleep,args=(60,),daemon=True).start()\nprint("READY",flush=True)\ntime.sleep(60)\n');
    const tid = readdirSync(`/proc/${p.pid}/task`).map(Number).find((t) => t !== p.pid)!;
    const r = await tsnap('dump', '--pid', String(tid), '--dir', join(work, 'img'));
    expect(r.code).toBe(ExitCode.usage);
    expect(r.stderr).toContain(`tsnap dump --pid ${p.pid}`);
    expectRunningUntraced(p.pid);
  });

  it('a process that creates and ends threads all the time is frozen whole and resumed untraced', async () => {
    const work = tmpDir('tsnap-dump-');
    const p = await startPython(`
import threading, time
def churn():
    while True:
        t = threading.Thread(target=lambda: None); t.start(); t.join()
for _ in range(2):
    threading.Thread(target=churn, daemon=True).start()
print("READY", flush=True)
time.sleep(600)
`);
    for (let i = 0; i < 3; i++) {
      const dir = join(work, `img${i}`);
      const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--leave-running');
      expect(r.code, r.stderr).toBe(0);
      const tids = readImage(dir).process!.threads.map((t) => t.tid);
      expect(tids[0]).toBe(p.pid);
      expect(tids.length).toBeGreaterThanOrEqual(3);
      expectRunningUntraced(p.pid);
    }
  });

  it('SIGINT in the middle of copying memory: the target runs on untraced with the same memory', async () => {
    const p = await startProcess(await compileC('bigmem'), ['read', '768']);
    const work = tmpDir('tsnap-dump-');
    const dir = join(work, 'img');
    const { child, done } = startTsnap(['dump', '--pid', String(p.pid), '--dir', dir]);
    // The pages file grows past its header once memory copying is under way.
    const copying = () => { try { return statSync(join(dir, 'pages')).size > 32; } catch { return false; } };
    while (!copying()) {
      if (child.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    child.kill('SIGINT');
    const r = await done;
    expect(r.code, r.stderr).toBe(ExitCode.interrupted);
    expect(r.stderr).toMatch(/interrupted by SIGINT/);
    expect(existsSync(dir)).toBe(false);
    expectRunningUntraced(p.pid);
    const before = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^sum=/, 20_000, before)).toBe(`sum=${p.readyInfo.sum}`);
  });

  it('SIGTERM in the middle of a --tree dump of threaded processes: every thread of every process runs on untraced', async () => {
    const p = await startPython(`
import os, threading, time
big = bytearray(400 << 20)
for i in range(0, len(big), 4096): big[i] = 1
def spin():
    while True: time.sleep(0.001)
for _ in range(3): threading.Thread(target=spin, daemon=True).start()
pid = os.fork()
if pid == 0:
    for _ in range(3): threading.Thread(target=spin, daemon=True).start()
    time.sleep(600)
print("READY child=%d" % pid, flush=True)
time.sleep(600)
`, [], { timeoutMs: 30_000 });
    const child = Number(p.readyInfo.child);
    const work = tmpDir('tsnap-dump-');
    const dir = join(work, 'img');
    const { child: t, done } = startTsnap(['dump', '--pid', String(p.pid), '--dir', dir, '--tree']);
    const copying = () => { try { return readdirSync(dir).some((d) => { try { return statSync(join(dir, d, 'pages')).size > 32; } catch { return false; } }); } catch { return false; } };
    while (!copying()) {
      if (t.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    t.kill('SIGTERM');
    const r = await done;
    expect(r.code, r.stderr).toBe(128 + 15); // as SIGTERM's default action would
    expect(r.stderr).toMatch(/interrupted by SIGTERM/);
    expect(existsSync(dir)).toBe(false);
    expectRunningUntraced(p.pid);
    expectRunningUntraced(child);
    expect(readdirSync(`/proc/${p.pid}/task`).length).toBe(4);
    process.kill(child, 'SIGKILL');
  });

  it('disk full: clear error, target resumed, no partial image', async () => {
    const p = await startProcess(await compileC('bigmem'), ['read', '16']);
    const mnt = tmpDir('tsnap-full-');
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tsnap-test', mnt]);
    try {
      const r = await tsnap('dump', '--pid', String(p.pid), '--dir', join(mnt, 'img'));
      expect(r.code, r.stderr).toBe(ExitCode.noSpace);
      expect(r.stderr).toMatch(/no space left/);
      expect(readdirSync(mnt)).toEqual([]);
    } finally {
      execFileSync('umount', [mnt]);
    }
    expectRunningUntraced(p.pid);
    const before = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000, before)).toBe('PASS');
  });
});

describe('damaged images are errors naming the file', () => {
  it('truncated pages, corrupted chunk, wrong version, missing inventory', async () => {
    const p = await startProcess(await compileC('bigmem'), ['read', '8']);
    const work = tmpDir('tsnap-dump-');
    const dir = join(work, 'img');
    expect((await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--leave-running')).code).toBe(0);
    const copy = (name: string) => {
      const d = join(work, name);
      mkdirSync(d);
      for (const f of readdirSync(dir)) execFileSync('cp', ['-p', join(dir, f), join(d, f)]);
      return d;
    };
    // Corrupted chunk: flip one byte of page data.
    const corrupt = copy('corrupt');
    execFileSync('python3', ['-c', `f=open('${corrupt}/pages','r+b'); f.seek(32+5000); b=f.read(1); f.seek(32+5000); f.write(bytes([b[0]^0xff]))`]);
    const img = readImage(corrupt);
    expect(() => [...storedPages(img)]).toThrow(/pages: chunk 0 checksum mismatch/);
    // Truncated pages file.
    const trunc = copy('trunc');
    execFileSync('truncate', ['-s', '100000', join(trunc, 'pages')]);
    expect(() => [...storedPages(readImage(trunc))]).toThrow(/pages: truncated/);
    // Wrong format version in the process file.
    const ver = copy('ver');
    execFileSync('python3', ['-c', `f=open('${ver}/process','r+b'); f.seek(8); f.write(bytes([9,0]))`]);
    const r = await tsnap('show', ver);
    expect(r.code).toBe(ExitCode.badImage);
    expect(r.stderr).toMatch(/process: image format version 9 is newer/);
    // Metadata corruption.
    const meta = copy('meta');
    execFileSync('python3', ['-c', `f=open('${meta}/pagemap','r+b'); f.seek(40); b=f.read(1); f.seek(40); f.write(bytes([b[0]^1]))`]);
    expect((await tsnap('show', meta)).stderr).toMatch(/pagemap: checksum mismatch/);
    // No inventory: incomplete image.
    const inc = copy('inc');
    rmSync(join(inc, 'inventory'));
    const r2 = await tsnap('show', inc);
    expect(r2.code).toBe(ExitCode.badImage);
    expect(r2.stderr).toMatch(/inventory: missing/);
  });
});

describe('scale', () => {
  it('dumps 40 000 VMAs: every VMA recorded, every page matches', async () => {
    const p = await startProcess(await compileC('manyvmas'), ['sleep', '20000']);
    const dir = join(tmpDir('tsnap-dump-'), 'img');
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--leave-running');
    expect(r.code, r.stderr).toBe(0);
    const img = readImage(dir);
    const addr = parseHex(p.readyInfo.addr);
    const pages = Number(p.readyInfo.pages);
    const inRegion = img.process!.mm.vmas.filter((v) => v.start >= addr && v.end <= addr + pages * PAGE);
    expect(inRegion.length).toBe(pages);
    expect(img.process!.mm.vmas).toHaveLength(readMaps(p.pid).length);
    const stored = storedPageSet(img);
    for (let i = 0; i < pages; i++) expect(stored.has(addr + i * PAGE)).toBe(true);
    expectPagesMatch(p.pid, dir);
  });
});

/**
 * Process state that is easy to lose: a group stop (SIGSTOP, SIGTSTP...)
 * is still in force after dump --leave-running and after restore, and the
 * process runs on at SIGCONT; a cwd removed under the process comes back as
 * a deleted directory of the same name.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { mkdirSync, readFileSync, readdirSync, readlinkSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, restoreDetached, dumpKillRestore } from './helpers/tsnap.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const COUNTER = `
import time, itertools
for i in itertools.count():
    print('TICK %d' % i, flush=True)
    time.sleep(0.02)
`;

const state = (pid: number) => /^State:\s+(\S)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits (up to 5 s: a loaded machine may take a while to run the stop) until `pid` is stopped. */
async function stopped(pid: number): Promise<void> {
  for (let i = 0; i < 1000 && state(pid) !== 'T'; i++) await sleep(5);
  expect(state(pid)).toBe('T');
}

/** Fields 5 and 6 of /proc/PID/stat: process group and session. */
function groupOf(pid: number): { pgrp: number; session: number; ppid: number } {
  const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
  return { ppid: Number(f[1]), pgrp: Number(f[2]), session: Number(f[3]) };
}

/**
 * POSIX: a process group none of whose members has a parent in another
 * group of the same session is orphaned, and the kernel discards SIGTSTP
 * sent to it. The tests' processes share the runner's group: orphaned when
 * the suite runs as a background job whose shell has gone.
 */
function orphanedGroup(pid: number): boolean {
  const { pgrp, session } = groupOf(pid);
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const m = groupOf(Number(name));
      if (m.pgrp !== pgrp) continue;
      const parent = groupOf(m.ppid);
      if (parent.session === session && parent.pgrp !== pgrp) return false;
    } catch { /* gone */ }
  }
  return true;
}

describe('a stopped process', () => {
  for (const sig of ['SIGSTOP', 'SIGTSTP'] as const) {
    it(`stopped by ${sig} stays stopped through dump --leave-running and restore, and runs on after SIGCONT`, async (ctx) => {
      const p = await startPython(COUNTER, [], { readyPattern: /TICK 3/ });
      if (sig === 'SIGTSTP' && orphanedGroup(p.pid)) ctx.skip();
      process.kill(p.pid, sig);
      await stopped(p.pid);
      const work = tmpDir('stopped');
      const lr = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'lr'), '--leave-running');
      expect(lr.code, lr.stderr).toBe(0);
      await sleep(100);
      expect(state(p.pid)).toBe('T');
      const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
      expect(d.code, d.stderr).toBe(0);
      const last = p.lines().at(-1)!;
      await p.exited;
      const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
      expect(r.result.code, r.result.stderr).toBe(0);
      await stopped(r.pid);
      await sleep(200);
      expect(state(r.pid)).toBe('T');
      expect(r.lines.filter((l) => l.startsWith('TICK'))).toEqual([]);
      process.kill(r.pid, 'SIGCONT');
      const next = Number(last.split(' ')[1]) + 1;
      await r.waitForLine(new RegExp(`^TICK ${next + 2}$`));
      expect(r.lines.find((l) => l.startsWith('TICK'))).toBe(`TICK ${next}`);
    });
  }
});

describe('a deleted cwd', () => {
  it('comes back deleted, with its name, and the process runs on', async () => {
    const work = tmpDir('cwd');
    const gone = join(work, 'gone');
    mkdirSync(gone);
    const p = await startPython(COUNTER, [], { cwd: gone, readyPattern: /TICK 1/ });
    rmdirSync(gone);
    expect(readlinkSync(`/proc/${p.pid}/cwd`)).toBe(`${gone} (deleted)`);
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toMatch(/restore check/);
    expect(readlinkSync(`/proc/${r.pid}/cwd`)).toBe(`${gone} (deleted)`);
    await r.waitForLine(/^TICK/);
  });

  it('whose parent is gone too is refused before the freeze, naming it', async () => {
    const work = tmpDir('cwd');
    mkdirSync(join(work, 'a', 'b'), { recursive: true });
    const p = await startPython(COUNTER, [], { cwd: join(work, 'a', 'b'), readyPattern: /TICK 1/ });
    rmdirSync(join(work, 'a', 'b'));
    rmdirSync(join(work, 'a'));
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code).toBe(5);
    expect(d.stderr).toMatch(/cwd of process \d+ is .*b \(deleted\), and its parent .*a is gone too/);
    expect(state(p.pid)).not.toMatch(/[tT]/);
  });
});

describe('oom_score_adj', () => {
  it('comes back as it was', async () => {
    const work = tmpDir('oom');
    const p = await startPython(`open('/proc/self/oom_score_adj', 'w').write('400')\n${COUNTER}`, [], { readyPattern: /TICK 1/ });
    expect(readFileSync(`/proc/${p.pid}/oom_score_adj`, 'utf8').trim()).toBe('400');
    const r = await dumpKillRestore(p, work);
    expect(readFileSync(`/proc/${r.pid}/oom_score_adj`, 'utf8').trim()).toBe('400');
    await r.waitForLine(/^TICK/);
  });
});

describe('audit login uid and membarrier registrations', () => {
  it('come back as they were', async () => {
    const work = tmpDir('loginuid');
    const p = await startPython(`import ctypes, sys
open('/proc/self/loginuid', 'w').write('4321')
libc = ctypes.CDLL(None, use_errno=True)
assert libc.syscall(324, 16, 0, 0) == 0  # MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED
print('READY', flush=True)
for cmd in sys.stdin:
    print('REG %d BARRIER %d' % (libc.syscall(324, 512, 0, 0), libc.syscall(324, 8, 0, 0)), flush=True)
`);
    const r = await dumpKillRestore(p, work);
    expect(readFileSync(`/proc/${r.pid}/loginuid`, 'utf8')).toBe('4321');
    r.writeLine('check');
    // Registered again: the private expedited barrier works (it fails with EPERM, -1, unregistered).
    expect(await r.waitForLine(/^REG/)).toBe('REG 16 BARRIER 0');
  });
});

describe('a cwd in another process\'s /proc directory', () => {
  it('is refused before the freeze, naming it', async () => {
    const work = tmpDir('cwd');
    const p = await startPython(COUNTER, [], { cwd: `/proc/${process.pid}`, readyPattern: /TICK 1/ });
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code).toBe(5);
    expect(d.stderr).toMatch(new RegExp(`cwd of process ${p.pid} is /proc/${process.pid}, in the /proc directory of process ${process.pid}`));
    expect(state(p.pid)).not.toMatch(/[tT]/);
  });
});

describe('a deleted cwd that an fd holds too', () => {
  it('is one directory again after restore', async () => {
    const work = tmpDir('cwd');
    const gone = join(work, 'gone');
    mkdirSync(gone);
    const p = await startPython(`import os, sys
dfd = os.open('.', os.O_RDONLY | os.O_DIRECTORY)
os.rmdir(${JSON.stringify(gone)})
print('READY', flush=True)
for cmd in sys.stdin:
    print('SAME' if os.fstat(dfd).st_ino == os.stat('.').st_ino else 'DIFFERENT', flush=True)
`, [], { cwd: gone });
    const r = await dumpKillRestore(p, work);
    r.writeLine('check');
    expect(await r.waitForLine(/^(SAME|DIFFERENT)/)).toBe('SAME');
  });
});

describe('a file of another process\'s /proc directory', () => {
  it('is refused before the freeze when that process is not dumped, and restored when it is the process itself', async () => {
    const work = tmpDir('procfd');
    const other = await startPython(`import os, sys, time
f = open('/proc/%d/stat' % int(sys.argv[1]))
print('READY', flush=True)
time.sleep(1000)`, [String(process.pid)]);
    const d = await tsnap('dump', '--pid', String(other.pid), '--dir', join(work, 'refused'));
    expect(d.code).toBe(5);
    expect(d.stderr).toMatch(new RegExp(`/proc/${process.pid}/stat, of a process outside the dump`));
    const own = await startPython(`import os, sys
f = open('/proc/%d/stat' % os.getpid())
print('READY', flush=True)
for cmd in sys.stdin:
    f.seek(0)
    print('PID %s' % f.read().split()[0], flush=True)
`);
    const d2 = await tsnap('dump', '--pid', String(own.pid), '--dir', join(work, 'img'));
    expect(d2.code, d2.stderr).toBe(0);
    await own.exited;
    const r = await restoreDetached(join(work, 'img'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('check');
    expect(await r.waitForLine(/^PID/)).toBe(`PID ${own.pid}`);
  });
});


/**
 * Seccomp: a process whose threads run under seccomp filters (shared and
 * per thread, with flags) or in strict mode is dumped without its filters
 * ever seeing tsnap's syscalls (the fixture's filter kills the process on
 * several tsnap runs in a frozen task), and comes back under exactly those
 * filters. Evidence: what each restored thread's syscalls return, a TSYNC
 * of the program's own, /proc status, and its memory (a counter).
 */
import { describe, it, expect, afterAll } from 'vitest';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, restoreDetached, dumpKillRestore, killPid } from './helpers/tsnap.js';
import { trackRestored } from './helpers/processes.js';
import { startServe } from './helpers/serve.js';
import { eventually } from './helpers/eventually.js';
import { ExitCode } from '../src/errors.js';
import { crc32 } from '../src/image/checksum.js';
import { mayNotify } from '../src/dump/seccomp.js';
import { commonPrefix } from '../src/restore/seccomp.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

/** Seccomp and Seccomp_filters of every thread, keyed by tid. */
function seccompOf(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const st = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    out[tid] = `${st.match(/^Seccomp:\s+(\d+)/m)![1]}/${st.match(/^Seccomp_filters:\s+(\d+)/m)![1]}`;
  }
  return out;
}

type Talk = { writeLine(s: string): void; waitForLine(re: RegExp, t?: number, from?: number): Promise<string> };
async function ask(p: Talk, cmd: string, re: RegExp, from = 0): Promise<string> {
  p.writeLine(cmd);
  return p.waitForLine(re, 5000, from);
}

async function start(mode: string, nnp = false) {
  const bin = await compileC('seccomp');
  const p = await startProcess(bin, nnp ? [mode, 'nnp'] : [mode]);
  return { p, work: tmpDir('tsnap-seccomp-'), worker: p.readyInfo.worker };
}

describe('seccomp', () => {
  it('filters shared and per thread (root, without no_new_privs) come back exactly after a kill-mode dump', async () => {
    const { p, work, worker } = await start('split');
    const before = seccompOf(p.pid);
    expect(before).toEqual({ [p.pid]: '2/3', [worker]: '2/2' });
    expect(await ask(p, 'c', /^CHECK /)).toBe('CHECK main=77,0,80 worker=77,78,0 count=1');
    const r = await dumpKillRestore(p, work);
    expect(r.pid).toBe(p.pid);
    expect(seccompOf(r.pid)).toEqual(before);
    // Each thread's own filters still answer, the counter goes on.
    expect(await ask(r, 'c', /^CHECK /)).toBe('CHECK main=77,0,80 worker=77,78,0 count=2');
    // The threads' chains differ as they did: the program's TSYNC still fails on the worker.
    expect(await ask(r, 't', /^TSYNC /)).toBe(`TSYNC ret=${worker} errno=0`);
    // Filter A kills on prctl, rt_sigaction...: the process is still there to answer.
    expect(await ask(r, 'c', /^CHECK /, 2)).toBe('CHECK main=77,0,80 worker=77,78,0 count=4');
    await killPid(r.pid);
  });

  it('filters shared with TSYNC stay shared (with no_new_privs): the program can TSYNC again after a leave-running dump and restore', async () => {
    const { p, work, worker } = await start('shared', true);
    expect(seccompOf(p.pid)).toEqual({ [p.pid]: '2/2', [worker]: '2/2' });
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    // The original: untraced, running, under its filters.
    expect(readFileSync(`/proc/${p.pid}/status`, 'utf8')).toMatch(/^TracerPid:\s+0$/m);
    expect(await ask(p, 'c', /^CHECK /)).toBe('CHECK main=77,0,79 worker=77,0,79 count=1');
    await killPid(p.pid);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(seccompOf(r.pid)).toEqual({ [r.pid]: '2/2', [worker]: '2/2' });
    expect(await ask(r, 'c', /^CHECK /)).toBe('CHECK main=77,0,79 worker=77,0,79 count=1');
    expect(await ask(r, 't', /^TSYNC /)).toBe('TSYNC ret=0 errno=0');
    expect(seccompOf(r.pid)).toEqual({ [r.pid]: '2/3', [worker]: '2/3' });
    await killPid(r.pid);
  });

  it('a thread in strict mode comes back in strict mode with its memory; a pre-dump, a delta dump and a lazy restore go through the filters too', async () => {
    const { p, work, worker } = await start('strict');
    expect(seccompOf(p.pid)).toEqual({ [p.pid]: '2/2', [worker]: '1/0' });
    expect(await ask(p, 'c', /^CHECK /)).toBe('CHECK main=77,0,79 worker=0,0,0/120 count=1');
    // The pre-dump puts a userfaultfd in the task: filter A kills on userfaultfd unless suspended.
    const pre = join(work, 'pre');
    const r1 = await tsnap('pre-dump', '--pid', String(p.pid), '--dir', pre);
    expect(r1.code, r1.stderr).toBe(0);
    expect(await ask(p, 'c', /^CHECK /, 2)).toBe('CHECK main=77,0,79 worker=0,0,0/240 count=2');
    const fin = join(work, 'fin');
    const r2 = await tsnap('dump', '--pid', String(p.pid), '--dir', fin, '--parent', pre);
    expect(r2.code, r2.stderr).toBe(0);
    await p.exited;
    // Lazily: the pager's registration is among the syscalls made after the filters are in.
    const r = await restoreDetached(fin, join(work, 'pid'), ['--lazy']);
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(seccompOf(r.pid)).toEqual({ [r.pid]: '2/2', [worker]: '1/0' });
    expect(await ask(r, 'c', /^CHECK /)).toBe('CHECK main=77,0,79 worker=0,0,0/360 count=3');
    await killPid(r.pid);
  });

  it('a filter that hands syscalls to a user-space listener is refused (exit 5), naming it; the process goes on untouched', async () => {
    const { p, work, worker } = await start('notify');
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(r.code, r.stderr).toBe(ExitCode.unsupported);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(new RegExp(`process ${p.pid} has a seccomp filter \\(2 of 2\\) that can hand syscalls to a user-space listener`));
    const st = readFileSync(`/proc/${p.pid}/status`, 'utf8');
    expect(st).toMatch(/^TracerPid:\s+0$/m);
    expect(st).not.toMatch(/^State:\s+[tT]/m);
    expect(seccompOf(p.pid)).toEqual({ [p.pid]: '2/2', [worker]: '2/1' });
    expect(await ask(p, 'c', /^CHECK /)).toBe('CHECK main=77,38,0 worker=77,0,0 count=1');
    await killPid(p.pid);
  });

  it('migrates: the process on the receiver runs under the same filters, in the same order; the source is gone', async () => {
    const bin = await compileC('seccomp');
    const p = await startProcess(bin, ['split', 'tick']);
    const worker = p.readyInfo.worker;
    await p.waitForLine(/^CHECK .* count=3$/, 5000);
    const work = tmpDir('tsnap-seccomp-mig-');
    const out = join(work, 'restored.out');
    const srv = await startServe(join(work, 'in'), ['--restore', '--count', '1', '--stdout', out]);
    try {
      const r = await tsnap('migrate', '--pid', String(p.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--json');
      expect(r.code, r.stderr).toBe(0);
      const done = JSON.parse(r.stdout.trim().split('\n').pop()!);
      trackRestored(done.restoredPid);
      expect((await p.exited).signal).toBe('SIGKILL');
      const last = Number(/count=(\d+)/.exec(p.lines().filter((l) => l.startsWith('CHECK')).pop()!)![1]);
      await eventually(() => (existsSync(out) ? readFileSync(out, 'utf8') : ''), (t) => t.includes(`count=${last + 3}\n`), 5000, `count=${last + 3} from the receiver's process`);
      const lines = readFileSync(out, 'utf8').split('\n').filter((l) => l.startsWith('CHECK'));
      for (const l of lines) expect(l).toMatch(/^CHECK main=77,0,80 worker=77,78,0 count=\d+$/);
      expect(seccompOf(done.restoredPid)).toEqual({ [done.restoredPid]: '2/3', [worker]: '2/2' });
      await killPid(done.restoredPid);
    } finally {
      srv.proc.kill('SIGKILL');
    }
  });

  it('an image whose process file hides its seccomp state from the header flag, or carries an unknown flag, is refused (exit 7), nothing started', async () => {
    const { p, work } = await start('split');
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    const path = join(dir, 'process');
    const good = readFileSync(path);
    // Seccomp (1), and records (2: formats/image-v1.md "Records in the process file").
    expect(good.readUInt32LE(12)).toBe(3);
    for (const flags of [2, 7]) {
      const bad = Buffer.from(good);
      bad.writeUInt32LE(flags, 12);
      bad.writeUInt32LE(crc32(bad.subarray(0, 28)), 28);
      writeFileSync(path, bad);
      const r = await tsnap('restore', '--dir', dir, '--new-pid', '--detach', '--pidfile', join(work, 'pid'));
      expect(r.code, r.stderr).toBe(ExitCode.badImage);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(flags === 2 ? /seccomp flag and the threads' seccomp state disagree/ : /header flags 0x7 are not defined/);
    }
    writeFileSync(path, good);
    await killPid(p.pid);
  });
});

describe('seccomp filters: pure logic', () => {
  const insn = (code: number, k: number) => { const b = Buffer.alloc(8); b.writeUInt16LE(code, 0); b.writeUInt32LE(k >>> 0, 4); return b; };
  it('a filter that can return SECCOMP_RET_USER_NOTIF (or the accumulator) is seen as notifying', () => {
    const RET_K = 0x06;
    expect(mayNotify(Buffer.concat([insn(0x20, 0), insn(RET_K, 0x7fff0000)]))).toBe(false);
    expect(mayNotify(Buffer.concat([insn(RET_K, 0x00050000 | 1), insn(RET_K, 0x7fc00000)]))).toBe(true);
    expect(mayNotify(insn(0x16 /* RET | A */, 0))).toBe(true);
  });
  it('the filters every thread has in common, oldest first', () => {
    const f = (n: number, flags = 0) => ({ prog: insn(0x06, n), flags });
    expect(commonPrefix([[f(1), f(2)], [f(1), f(2), f(3)]])).toBe(2);
    expect(commonPrefix([[f(1), f(2)], [f(1), f(3)]])).toBe(1);
    expect(commonPrefix([[f(1, 2)], [f(1, 0)]])).toBe(0);
    expect(commonPrefix([[f(1)], []])).toBe(0);
  });
});

/**
 * Multi-threaded processes: every thread frozen, dumped and brought back
 * with its own tid, TLS, registers and blocking syscall; verified by the
 * program's own checks.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running } from './helpers/fixtures.js';
import { tsnap, restoreDetached, readImage } from './helpers/tsnap.js';
import { tracerOf } from './helpers/processes.js';
import { eventually } from './helpers/eventually.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

function tasksOf(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).map(Number).sort((a, b) => a - b);
}

function counts(line: string): number[] {
  return /counts=([\d,]+)/.exec(line)![1].split(',').map(Number);
}

async function status(p: { writeLine(s: string): void; waitForLine(re: RegExp, t?: number, from?: number): Promise<string> }, from: number): Promise<string> {
  p.writeLine('status');
  return p.waitForLine(/^STATUS/, 5000, from);
}

/** No thread of the process is traced (one that ended after the listing is not). */
function notTraced(pid: number): void {
  for (const tid of tasksOf(pid)) {
    expect(tracerOf(tid), `thread ${tid}`).toBe(0);
  }
}

describe('threads', () => {
  it('4 counting threads and one in pthread_cond_wait come back with their tids, TLS and wait', async () => {
    const work = tmpDir('tsnap-threads-');
    const p = await startProcess(await compileC('threads'), ['4']);
    const tidsBefore = tasksOf(p.pid);
    expect(tidsBefore.length).toBe(6);
    const before = counts(await status(p, 0));
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const img = readImage(dir);
    expect(img.process!.threads.map((t) => t.tid).sort((a, b) => a - b)).toEqual(tidsBefore);

    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.pid).toBe(p.pid);
    expect(tasksOf(r.pid)).toEqual(tidsBefore);
    const s1 = await status(r, 0);
    const s2 = await eventually(() => status(r, r.lines.length), (s) => /bad=0 /.test(s) && counts(s).every((c, i) => c > counts(s1)[i]), 5000, 'every thread counting on');
    expect(s2).toMatch(/bad=0 /);
    counts(s1).forEach((c, i) => expect(c).toBeGreaterThanOrEqual(before[i]));
    // Every worker runs on after the restore.
    counts(s2).forEach((c, i) => expect(c).toBeGreaterThan(counts(s1)[i]));
    // The waiter was restored inside its futex wait and wakes when signalled.
    r.writeLine('wake');
    expect(await r.waitForLine(/^WOKE/)).toBe(`WOKE tid=${p.readyInfo.waiter}`);
    notTraced(r.pid);
  });

  it('leave-running: every thread resumes untraced with no mismatch', async () => {
    const work = tmpDir('tsnap-threads-');
    const p = await startProcess(await compileC('threads'), ['8', '100']);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    notTraced(p.pid);
    const s1 = await status(p, p.lines().length);
    const s2 = await eventually(() => status(p, p.lines().length), (s) => counts(s).every((c, i) => c > counts(s1)[i]), 5000, 'every thread counting on');
    expect(s2).toMatch(/bad=0 /);
    counts(s2).forEach((c, i) => expect(c).toBeGreaterThan(counts(s1)[i]));
    p.writeLine('wake');
    await p.waitForLine(/^WOKE/);
  });

  it('pre-dumps and a delta dump of a threaded process restore to a running copy', async () => {
    const work = tmpDir('tsnap-threads-');
    const p = await startProcess(await compileC('threads'), ['4', '500']);
    const pre = join(work, 'pre');
    const r1 = await tsnap('pre-dump', '--pid', String(p.pid), '--dir', pre);
    expect(r1.code, r1.stderr).toBe(0);
    const before = counts(await status(p, p.lines().length));
    const fin = join(work, 'final');
    const r2 = await tsnap('dump', '--pid', String(p.pid), '--dir', fin, '--parent', pre);
    expect(r2.code, r2.stderr).toBe(0);
    expect(readImage(fin).inventory.kind).toBe('delta');
    await p.exited;
    const r = await restoreDetached(fin, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    const s = await status(r, 0);
    expect(s).toMatch(/bad=0 /);
    counts(s).forEach((c, i) => expect(c).toBeGreaterThanOrEqual(before[i]));
    r.writeLine('wake');
    await r.waitForLine(/^WOKE/);
  });

  it('python3 threads keep running and keep their state', async () => {
    const work = tmpDir('tsnap-threads-');
    const script = `
import threading, time, sys
counts = [0, 0, 0]
lock = threading.Lock()
ev = threading.Event()
def work(i):
    while True:
        with lock:
            counts[i] += 1
        time.sleep(0.002)
def waiter():
    ev.wait()
    print('WOKE', flush=True)
for i in range(3):
    threading.Thread(target=work, args=(i,), daemon=True).start()
threading.Thread(target=waiter, daemon=True).start()
print('READY', threading.active_count(), flush=True)
for line in sys.stdin:
    if line.startswith('status'):
        with lock:
            print('STATUS bad=0 counts=' + ','.join(map(str, counts)), flush=True)
    elif line.startswith('wake'):
        ev.set()
`;
    const p: Running = await startPython(script, []);
    expect(tasksOf(p.pid).length).toBe(5);
    const before = counts(await status(p, 0));
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    const s1 = await status(r, 0);
    const s2 = await eventually(() => status(r, r.lines.length), (s) => counts(s).every((c, i) => c > counts(s1)[i]), 5000, 'every thread counting on');
    counts(s1).forEach((c, i) => expect(c).toBeGreaterThanOrEqual(before[i]));
    counts(s2).forEach((c, i) => expect(c).toBeGreaterThan(counts(s1)[i]));
    r.writeLine('wake');
    await r.waitForLine(/^WOKE/);
  });

  it('pending signals come back with their siginfo: queued values in order, and one directed at a thread to that thread', async () => {
    const work = tmpDir('tsnap-threads-');
    const p = await startProcess(await compileC('pending'), []);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('check');
    expect(await r.waitForLine(/^(PASS|FAIL)/)).toBe('PASS');
  });
});

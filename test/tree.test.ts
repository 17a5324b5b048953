/**
 * Process trees: a parent and its children frozen together, restored with
 * their pids, parent links, groups, sessions, the pipes between them (with
 * the bytes in flight) and the memory they share, each checking the others.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { readFileSync, existsSync, rmSync, readlinkSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running } from './helpers/fixtures.js';
import { waitPidsFree } from './helpers/processes.js';
import { tsnap, restoreDetached, killPid, readImage, storedPageSet } from './helpers/tsnap.js';
import { readTreeManifest } from '../src/image/tree-manifest.js';
import { eventually } from './helpers/eventually.js';
import { readStat, readStatus } from '../src/proc/index.js';
import { findHolders } from '../src/track/untrack.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

interface Status { counter: number; last: number; bad: number }

async function status(p: { writeLine(s: string): void; waitForLine(re: RegExp, t?: number, from?: number): Promise<string> }, from: number): Promise<Status> {
  p.writeLine('status');
  // The parent answers between two writes into pipe A, which it may wait on
  // for child1 to drain a whole page of numbers (~0.5 s idle, several times
  // that on a loaded machine).
  const l = await p.waitForLine(/^STATUS/, 15_000, from);
  const m = /counter=(\d+) last=(\d+) bad=(\d+)/.exec(l)!;
  return { counter: Number(m[1]), last: Number(m[2]), bad: Number(m[3]) };
}

function identity(pid: number) {
  const st = readStat(pid);
  return { pid, ppid: st.ppid, pgrp: st.pgrp, session: st.session };
}

async function gone(pids: number[]): Promise<void> {
  await waitPidsFree(pids);
}

describe('process trees', () => {
  it('parent and two children: pids, parent links, groups, sessions, pipes in flight and shared memory survive', async () => {
    const work = tmpDir('tsnap-tree-');
    const p: Running = await startProcess(await compileC('tree'), []);
    const kids = [Number(p.readyInfo.child1), Number(p.readyInfo.child2)];
    const before = [p.pid, ...kids].map(identity);
    await new Promise((r) => setTimeout(r, 300)); // pipe A fills up
    const s0 = await status(p, 0);
    expect(s0.bad).toBe(0);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await gone(kids);
    // The numbers in flight were in the pipes at the dump.
    const pipes = [p.pid, ...kids].flatMap((pid) => readImage(join(dir, String(pid))).process!.fds.filter((f) => f.pipe?.data));
    expect(pipes.reduce((n, f) => n + f.pipe!.data!.length, 0)).toBeGreaterThan(0);

    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.pid).toBe(p.pid);
    const s1 = await status(r, 0);
    const s2 = await eventually(() => status(r, r.lines.length), (s) => s.last > s1.last, 15_000, 'the restored tree counting on');
    expect(s2.bad).toBe(0);
    expect(s1.last).toBeGreaterThanOrEqual(s0.last);
    expect(s2.last).toBeGreaterThan(s1.last);
    expect(s2.counter).toBeGreaterThan(s1.counter);
    // Same pids, parents, groups and sessions (the root's own group and
    // session are those of the restorer, as for a shell job).
    const after = [p.pid, ...kids].map(identity);
    expect(after.slice(1)).toEqual(before.slice(1));
    for (const pid of [p.pid, ...kids]) expect(readStatus(pid).tracerPid).toBe(0);
    for (const k of kids) await killPid(k);
  });

  it('pre-dump --tree twice, then dump --tree --parent: deltas per process, restored and self-checked', async () => {
    const work = tmpDir('tsnap-tree-');
    const p: Running = await startProcess(await compileC('tree'), []);
    const kids = [Number(p.readyInfo.child1), Number(p.readyInfo.child2)];
    const r1 = await tsnap('pre-dump', '--pid', String(p.pid), '--dir', join(work, '1'), '--tree');
    expect(r1.code, r1.stderr).toBe(0);
    const r2 = await tsnap('pre-dump', '--pid', String(p.pid), '--dir', join(work, '2'), '--tree', '--parent', join(work, '1'));
    expect(r2.code, r2.stderr).toBe(0);
    const r3 = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, '3'), '--tree', '--parent', join(work, '2'), '--json');
    expect(r3.code, r3.stderr).toBe(0);
    const out = JSON.parse(r3.stdout);
    expect(out.processes.map((x: { pid: number }) => x.pid)).toEqual([p.pid, ...kids]);
    // From the images themselves: each process's final image is a delta on its
    // own chain through round 2 to a full round 1, and stores only a part of
    // what round 1 stored (the tree's processes barely write between rounds).
    for (const pid of [p.pid, ...kids]) {
      const at = (n: string) => {
        const m = readTreeManifest(join(work, n)).processes.find((x) => x.pid === pid)!;
        return readImage(join(work, n, m.dir));
      };
      const [i1, i2, i3] = ['1', '2', '3'].map(at);
      expect([i1.inventory.kind, i2.inventory.kind, i3.inventory.kind]).toEqual(['full', 'delta', 'delta']);
      expect(i3.inventory.parent!.imageId).toBe(i2.inventory.imageId);
      expect(i2.inventory.parent!.imageId).toBe(i1.inventory.imageId);
      const base = storedPageSet(i1).size;
      expect(base).toBeGreaterThan(0);
      expect(storedPageSet(i3).size, `pid ${pid}: pages stored by the final delta vs the full round`).toBeLessThan(base / 2);
    }
    await p.exited;
    await gone(kids);
    const r = await restoreDetached(join(work, '3'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    const s1 = await status(r, 0);
    const s2 = await eventually(() => status(r, r.lines.length), (s) => s.last > s1.last, 15_000, 'the restored tree counting on');
    expect(s2.bad).toBe(0);
    expect(s2.last).toBeGreaterThan(s1.last);
    for (const k of kids) await killPid(k);
  });

  it('untrack --dir of a tree pre-dump, dump --tree --pre-dumps, squash of the tree, restore of the squashed image', async () => {
    const work = tmpDir('tsnap-tree-');
    const p: Running = await startProcess(await compileC('tree'), []);
    const all = [p.pid, Number(p.readyInfo.child1), Number(p.readyInfo.child2)];
    const pre = await tsnap('pre-dump', '--pid', String(p.pid), '--dir', join(work, 'pre'), '--tree');
    expect(pre.code, pre.stderr).toBe(0);
    for (const pid of all) expect(findHolders(pid).length).toBe(1);
    const un = await tsnap('untrack', '--dir', join(work, 'pre'));
    expect(un.code, un.stderr).toBe(0);
    for (const pid of all) expect(findHolders(pid)).toEqual([]);

    const loop = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'loop'), '--tree', '--pre-dumps', '2', '--json');
    expect(loop.code, loop.stderr).toBe(0);
    const out = JSON.parse(loop.stdout) as { final: string; rounds: { processes: { kind: string }[] }[] };
    expect(out.rounds.length).toBeGreaterThanOrEqual(2);
    for (const x of out.rounds[out.rounds.length - 1].processes) expect(x.kind).toBe('delta');
    await p.exited;
    await gone(all.slice(1));
    const sq = await tsnap('squash', out.final, '--out', join(work, 'full'));
    expect(sq.code, sq.stderr).toBe(0);
    rmSync(join(work, 'loop'), { recursive: true }); // the squashed image stands alone
    expect((await tsnap('verify', join(work, 'full'))).code).toBe(0);
    const r = await restoreDetached(join(work, 'full'), join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    const s1 = await status(r, 0);
    const s2 = await eventually(() => status(r, r.lines.length), (s) => s.last > s1.last, 15_000, 'the restored tree counting on');
    expect(s2.bad).toBe(0);
    expect(s2.last).toBeGreaterThan(s1.last);
    for (const k of all.slice(1)) await killPid(k);
  });

  it('children that exited (by exit, SIGTERM, SIGKILL) but were not reaped come back as zombies with their exit status', async () => {
    const work = tmpDir('tsnap-tree-');
    const p: Running = await startPython(`
import os, signal, sys, time
a = os.fork()
if a == 0:
    os._exit(7)
b = os.fork()
if b == 0:
    time.sleep(600)
os.kill(b, signal.SIGTERM)
c = os.fork()
if c == 0:
    time.sleep(600)
os.kill(c, signal.SIGKILL)
for z in (a, b, c):
    os.waitid(os.P_PID, z, os.WEXITED | os.WNOWAIT)   # dead, and left unreaped (a nap may not be enough under load)
print('READY a=%d b=%d c=%d' % (a, b, c), flush=True)
for line in sys.stdin:
    if line.startswith('reap'):
        r = []
        for pid in (a, b, c):
            got, st = os.waitpid(pid, os.WNOHANG)
            r.append('%d:%s' % (got, ('exit %d' % os.WEXITSTATUS(st)) if os.WIFEXITED(st) else ('signal %d' % os.WTERMSIG(st)) if os.WIFSIGNALED(st) else '?'))
        print('REAPED ' + ' '.join(r), flush=True)
`);
    const [a, b, c] = [Number(p.readyInfo.a), Number(p.readyInfo.b), Number(p.readyInfo.c)];
    for (const z of [a, b, c]) expect(readStat(z).state).toBe('Z');
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await gone([a, b, c]);
    expect((await tsnap('verify', dir)).code).toBe(0);
    expect((await tsnap('show', dir)).stdout).toContain(`${a} (parent ${p.pid}): exited, not yet reaped (wait status ${7 << 8})`);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    for (const z of [a, b, c]) {
      expect(readStat(z).state).toBe('Z');
      expect(readStat(z).ppid).toBe(p.pid);
    }
    r.writeLine('reap');
    // Killed by SIGKILL too (its action cannot be set, and needs not be).
    expect(await r.waitForLine(/^REAPED/)).toBe(`REAPED ${a}:exit 7 ${b}:signal 15 ${c}:signal 9`);
  });

  it('leave-running: the whole tree resumes untraced and keeps checking itself', async () => {
    const work = tmpDir('tsnap-tree-');
    const p: Running = await startProcess(await compileC('tree'), []);
    const kids = [Number(p.readyInfo.child1), Number(p.readyInfo.child2)];
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--tree', '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    for (const pid of [p.pid, ...kids]) expect(readStatus(pid).tracerPid).toBe(0);
    const s1 = await status(p, p.lines().length);
    const s2 = await eventually(() => status(p, p.lines().length), (s) => s.last > s1.last, 15_000, 'the tree counting on after the dump');
    expect(s2.bad).toBe(0);
    expect(s2.last).toBeGreaterThan(s1.last);
    expect(readFileSync(join(work, 'img', 'tree')).length).toBeGreaterThan(0);
  });

  it('--new-pid runs a second copy of a tree next to the running original, with its own children, groups and pipes', async () => {
    const work = tmpDir('tsnap-tree-');
    const p: Running = await startProcess(await compileC('tree'), []);
    const kids = [Number(p.readyInfo.child1), Number(p.readyInfo.child2)];
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree', '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    const r = await restoreDetached(dir, join(work, 'pid'), ['--new-pid']);
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.pid).not.toBe(p.pid);
    const copyKids = readFileSync(`/proc/${r.pid}/task/${r.pid}/children`, 'utf8').trim().split(' ').map(Number);
    try {
      expect(copyKids.length).toBe(2);
      for (const k of copyKids) expect(kids).not.toContain(k);
      // child1 leads its own group in the copy too; child2 its own session.
      const [c1, c2] = copyKids.map(identity);
      expect(c1.pgrp).toBe(c1.pid);
      expect(c2.session).toBe(c2.pid);
      const s1 = await status(r, 0);
      const s2 = await eventually(() => status(r, r.lines.length), (s) => s.last > s1.last, 15_000, 'the restored tree counting on');
      expect(s2.last).toBeGreaterThan(s1.last);
      // The copy's children check getppid() against the pid they knew: the
      // original's. The stale-pid warning says so.
      expect(r.result.stderr).toMatch(/new pids/);
      // The original runs on, untouched.
      const o = await status(p, p.lines().length);
      expect(o.bad).toBe(0);
    } finally {
      for (const k of copyKids) await killPid(k);
    }
  });

  it('memory a parent and child share through a memfd and a /dev/shm file stays shared after restore', async () => {
    const work = tmpDir('tsnap-tree-');
    const shm = `/dev/shm/tsnap-test-${process.pid}-${Date.now()}`;
    const script = `
import mmap, os, struct, sys, threading, time
fd = os.memfd_create('tsnap-shared')
os.ftruncate(fd, 4096)
mm = mmap.mmap(fd, 4096)
os.close(fd)
sfd = os.open(${JSON.stringify(shm)}, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(sfd, 4096)
sm = mmap.mmap(sfd, 4096)
os.close(sfd)
def count(slot):
    while True:
        for m in (mm, sm):
            struct.pack_into('Q', m, slot * 8, struct.unpack_from('Q', m, slot * 8)[0] + 1)
        time.sleep(0.002)
pid = os.fork()
if pid == 0:
    count(1)
threading.Thread(target=count, args=(0,), daemon=True).start()
print('READY child=%d' % pid, flush=True)
for line in sys.stdin:
    if line.startswith('status'):
        v = [struct.unpack_from('Q', m, s * 8)[0] for m in (mm, sm) for s in (0, 1)]
        print('STATUS memfd=%d,%d shm=%d,%d' % tuple(v), flush=True)
`;
    try {
      const p: Running = await startProcess('python3', ['-u', '-c', script]);
      const child = Number(p.readyInfo.child);
      const dir = join(work, 'img');
      const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree');
      expect(d.code, d.stderr).toBe(0);
      await p.exited;
      await gone([child]);
      for (const pid of [p.pid, child]) expect(readImage(join(dir, String(pid))).process!.memfds!.map((m) => m.name)).toEqual(['tsnap-shared']);
      const r = await restoreDetached(dir, join(work, 'pid'));
      expect(r.result.code, r.result.stderr).toBe(0);
      const read = async () => {
        r.writeLine('status');
        const l = await r.waitForLine(/^STATUS/, 5000, r.lines.length);
        return /memfd=(\d+),(\d+) shm=(\d+),(\d+)/.exec(l)!.slice(1).map(Number);
      };
      const a = await read();
      const b = await eventually(read, (v) => v[0] > a[0] && v[1] > a[1] && v[3] > a[3], 5000, 'both shared counters moving');
      // The parent sees the child's counters move in both: the memory is one, not two copies.
      expect(b[1]).toBeGreaterThan(a[1]);
      expect(b[3]).toBeGreaterThan(a[3]);
      expect(b[0]).toBeGreaterThan(a[0]);
      await killPid(child);
    } finally {
      rmSync(shm, { force: true });
    }
  });

  it('two pipes between a parent and its child, each holding one end of each, come back connected the same way', async () => {
    // The child imports both ends it lacks from the parent through one pidfd:
    // placing the first must not replace that pidfd (it once took fd 3).
    const work = tmpDir('tsnap-tree-');
    const script = `
import os, signal
r1, w1 = os.pipe(); r2, w2 = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w1); os.close(r2)
    while True: signal.pause()
os.close(r1); os.close(w2)
print(f"READY child={pid} w1={w1} r2={r2} r1={r1} w2={w2}", flush=True)
while True: signal.pause()
`;
    const p = await startPython(script);
    const child = Number(p.readyInfo.child);
    const { w1, r2, r1, w2 } = p.readyInfo;
    const links = (pid: number, fd: string) => readlinkSync(`/proc/${pid}/fd/${fd}`);
    for (let i = 0; i < 300 && existsSync(`/proc/${child}/fd/${w1}`); i++) await new Promise((r) => setTimeout(r, 10));
    const before = [links(p.pid, w1), links(p.pid, r2), links(child, r1), links(child, w2)];
    expect(before[0]).toBe(before[2]);
    expect(before[1]).toBe(before[3]);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await gone([child]);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    try {
      const after = [links(p.pid, w1), links(p.pid, r2), links(child, r1), links(child, w2)];
      expect(after[0]).toMatch(/^pipe:/);
      expect(after[0]).toBe(after[2]);
      expect(after[1]).toBe(after[3]);
      expect(after[0]).not.toBe(after[1]);
      expect(readdirSync(`/proc/${child}/fd`).sort()).toEqual(['0', '1', '2', r1, w2].sort());
    } finally {
      await killPid(child);
    }
  });

  it('siblings sharing one fd table their parent left (CLONE_FILES, then unshare) are refused before the freeze, naming both', async () => {
    const p = await startProcess(await compileC('sharedfds'), []);
    const child = Number(p.readyInfo.child);
    const child2 = Number(p.readyInfo.child2);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(tmpDir('tsnap-tree-'), 'img'), '--tree');
    expect(d.code).toBe(5);
    expect(d.stderr).toMatch(new RegExp(`processes ${child} and ${child2} share one fd table`));
    for (const pid of [p.pid, child, child2]) expect(readStatus(pid).tracerPid).toBe(0);
    for (const pid of [child, child2]) expect(readStat(pid).state).not.toBe('Z');
  });
});


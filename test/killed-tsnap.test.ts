/**
 * A tsnap that dies at any instant leaves its target exactly as it found
 * it: same registers (a read() blocked at the freeze returns what is then
 * written, never 0 or an fd number), same fds, same mappings, no
 * write-protection, not traced, not stopped, its memory writes intact.
 *
 * tsnap is SIGKILLed (no handler of its own runs) at named points
 * (TSNAP_FAULT_AT, src/fault-points.ts): right after the freeze, with the
 * scratch mapping in place, with the injected userfaultfd still in the
 * target, with the one-copy dump's pipes in it (empty, full of its
 * pages, and being spliced by a pool thread into a second pages file), and in the middle of the n-th request to the guardian for every
 * n across the remote-syscall window; and at random instants.
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createConnection } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { cleanupTmpDirs, compileC, startProcess, startPython, tmpDir, useProcessCleanup, type Running } from './helpers/fixtures.js';
import { TSNAP_BIN, tsnap } from './helpers/tsnap.js';
import { findHolders } from '../src/track/untrack.js';
import { lockRulesOf } from './helpers/lock-rules.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

interface Trial { cmd: 'dump' | 'pre-dump' | 'cow'; fault: string | null; delayMs: number; extra?: string[] }

/**
 * Trials per target (50; TSNAP_FAULT_TRIALS=N for more, as docs/reliability.md
 * does): every named point, random guardian requests, random instants.
 */
const PER_TARGET = Number(process.env.TSNAP_FAULT_TRIALS ?? 50);

function trials(): Trial[] {
  const out: Trial[] = [];
  const cmds = ['dump', 'pre-dump'] as const;
  for (const cmd of [...cmds, 'cow'] as const) {
    // A first pre-dump's one freeze injects the userfaultfd; it maps no scratch memory.
    for (const fault of cmd === 'pre-dump' ? ['frozen'] : ['frozen', 'scratch-mapped']) out.push({ cmd, fault, delayMs: 0 });
  }
  out.push({ cmd: 'pre-dump', fault: 'uffd-injected', delayMs: 0 });
  // The one-copy path (frozen, --no-cow): its pipes are in the target, and then its first remote vmsplice.
  out.push({ cmd: 'dump', fault: 'splice-pipes', delayMs: 0, extra: ['--no-cow'] });
  out.push({ cmd: 'dump', fault: 'splice-filled', delayMs: 0, extra: ['--no-cow'] });
  out.push({ cmd: 'dump', fault: 'splice-closed', delayMs: 0, extra: ['--no-cow'] });
  // A small process's dump makes ~12 requests (the freeze, the state reads,
  // the scratch mapping, the batch of remote syscalls run as one, the
  // release), a first pre-dump 5 (2026-12-01): hit each.
  for (let i = 0; out.length < Math.round(PER_TARGET * 0.8); i++) {
    const cmd = cmds[i % 2];
    const n = 1 + Math.floor(Math.random() * (cmd === 'dump' ? 11 : 5));
    out.push({ cmd, fault: `guardian-request:${n}`, delayMs: 0 });
  }
  // Random instants, a copy-on-write dump among them (its fault-serving worker and write-protection in flight).
  const anyCmd = [...cmds, 'cow'] as const;
  for (let i = 0; out.length < PER_TARGET; i++) out.push({ cmd: anyCmd[i % 3], fault: null, delayMs: 60 + Math.floor(Math.random() * 310) });
  return out;
}

function runTsnap(args: string[], fault: string | null, delayMs: number): Promise<{ code: number | null; signal: string | null }> {
  const env = { ...process.env };
  if (fault) env.TSNAP_FAULT_AT = fault;
  else delete env.TSNAP_FAULT_AT;
  // The targets are small, and the one-copy path starts at 4 MiB: without this its fault points never fire.
  if (fault?.startsWith('splice-')) env.TSNAP_SPLICE = 'always';
  const child = spawn(process.execPath, [TSNAP_BIN, ...args], { stdio: 'ignore', env });
  // TSNAP_FAULT_SIGNAL=SIGTERM (or SIGINT) sends that at the random instants instead: tsnap's own cleanup then runs.
  if (delayMs) setTimeout(() => { try { child.kill((process.env.TSNAP_FAULT_SIGNAL ?? 'SIGKILL') as NodeJS.Signals); } catch { /* exited */ } }, delayMs);
  return new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
}

interface Snapshot { fds: string[]; maps: string; sched: string[] }

/** Each thread's scheduling policy and priority (stat fields 18 and 41): a copy-on-write window raises them while frozen. */
function schedOf(pid: number): string[] {
  return readdirSync(`/proc/${pid}/task`).sort().map((tid) => {
    try {
      const st = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      return `${tid}:prio ${f[15]} policy ${f[38]}`;
    } catch { return tid; }
  });
}

function snapshot(pid: number): Snapshot {
  const fds = readdirSync(`/proc/${pid}/fd`).sort().map((fd) => {
    try { return `${fd}:${readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8').split('\n').find((l) => l.startsWith('flags'))}`; } catch { return fd; }
  });
  return { fds, maps: readFileSync(`/proc/${pid}/maps`, 'utf8'), sched: schedOf(pid) };
}

function traceState(pid: number): { tracer: number; state: string } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  return { tracer: Number(/^TracerPid:\s+(\d+)/m.exec(s)![1]), state: /^State:\s+(\S)/m.exec(s)![1] };
}

async function untraced(pid: number): Promise<void> {
  // The guardian puts the target back as soon as it sees tsnap gone (bounded at 10 s: a loaded machine runs it late).
  for (let i = 0; i < 1000; i++) {
    const { tracer, state } = traceState(pid);
    if (tracer === 0 && state !== 'T' && state !== 't') return;
    await new Promise((r) => setTimeout(r, 10));
  }
  expect(traceState(pid)).toEqual({ tracer: 0, state: expect.not.stringMatching(/[Tt]/) });
}


function uffdFlagged(pid: number): string[] {
  return readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n').filter((l) => l.startsWith('VmFlags:') && / uw\b/.test(l));
}

const what0 = (i: number, t: Trial, outcome: string) => `trial ${i} (${t.cmd}, ${t.fault ?? `kill after ${t.delayMs} ms`}, ${outcome})`;

async function noHolder(pid: number, what: string): Promise<void> {
  for (let i = 0; i < 1000 && findHolders(pid).length > 0; i++) await new Promise((r) => setTimeout(r, 10));
  expect(findHolders(pid), what).toEqual([]);
}

async function runTrials(p: Running, check: (i: number) => Promise<void>): Promise<string[]> {
  const before = snapshot(p.pid);
  const dir = tmpDir('killed');
  const outcomes: string[] = [];
  const all = trials();
  for (const [i, t] of all.entries()) {
    const img = join(dir, String(i));
    const args = t.cmd === 'cow'
      ? ['dump', '--pid', String(p.pid), '--dir', img, '--leave-running', '--cow']
      : [t.cmd, '--pid', String(p.pid), '--dir', img, ...(t.cmd === 'dump' ? ['--leave-running'] : []), ...(t.extra ?? [])];
    const r = await runTsnap(args, t.fault, t.delayMs);
    // Under TSNAP_FAULT_SIGNAL, tsnap's exit 128 + signo is the interrupted run.
    // (or death by that signal, before tsnap's handlers are installed).
    const sig = process.env.TSNAP_FAULT_SIGNAL;
    const interrupted = r.signal === 'SIGKILL' || (sig !== undefined && r.signal === sig) || (sig === 'SIGTERM' && r.code === 143) || (sig === 'SIGINT' && r.code === 130);
    outcomes.push(interrupted ? 'killed' : `exit ${r.code}`);
    // A named point the run never reaches would test nothing: each must be on the path it names.
    if (t.fault && !t.fault.startsWith('guardian-request:')) expect(r.signal, `${t.cmd} never reached ${t.fault}`).toBe('SIGKILL');
    await untraced(p.pid);
    if (t.cmd === 'pre-dump') {
      // Tracking no committed image refers to must not outlive the run...
      if (!existsSync(join(img, 'inventory'))) await noHolder(p.pid, what0(i, t, outcomes[i]));
      // ...and a pre-dump that committed keeps it on purpose: end it.
      await tsnap('untrack', '--pid', String(p.pid));
    }
    const what = what0(i, t, outcomes[i]);
    expect(p.alive(), what).toBe(true);
    expect(snapshot(p.pid), what).toEqual(before);
    expect(uffdFlagged(p.pid), what).toEqual([]);
    await check(i);
    rmSync(img, { recursive: true, force: true });
  }
  return outcomes;
}

describe('a tsnap killed at any instant', () => {
  it(`leaves a process blocked in read() and a memory writer exactly as they were (${2 * PER_TARGET} trials)`, async () => {
    const bin = await compileC('victim');
    const reader = await startProcess(bin, ['reader']);
    const writer = await startProcess(bin, ['writer'], { stdin: 'ignore' });
    const letters = 'abcdefghijklmnopqrstuvwxyz';
    const [r, w] = await Promise.all([
      runTrials(reader, async (i) => {
        const mark = reader.lines().length;
        const c = letters[i % letters.length];
        reader.child.stdin!.write(c);
        await reader.waitForLine(/^GOT/, 5000, mark);
        const got = reader.lines().slice(mark);
        expect(got.slice(0, 1), `read() after trial ${i}`).toEqual([`GOT 1 ${c}`]);
      }),
      runTrials(writer, async (i) => {
        const last = writer.lines().length;
        await writer.waitForLine(/^TICK/, 5000, last);
        expect(writer.lines().filter((l) => l.startsWith('BAD')), `writer after trial ${i}`).toEqual([]);
      }),
    ]);
    // Most trials must really have killed tsnap mid-way, not let it finish.
    // (Not all: a guardian-request:n past a run's last request, or an instant after a fast run, lets it finish;
    // how many requests a run makes changes with the code, so the floor leaves room.)
    expect([...r, ...w].filter((o) => o === 'killed').length, [...r, ...w].join(' ')).toBeGreaterThan(1.3 * PER_TARGET);
    expect(reader.lines().filter((l) => !/^GOT 1 [a-z]$/.test(l) && !l.startsWith('READY'))).toEqual([]);
  }, 240_000 * Math.max(1, PER_TARGET / 50));

  it('in a one-copy dump split over two pages files (a pool thread splicing into pages.1): killed there or at any instant of the copy, the process runs on with its memory intact', async () => {
    // 80 MiB: past the split's 64 MiB floor, so the dump is the default one, and its copy lasts long enough to be hit.
    const p = await startProcess(await compileC('bigmem'), ['read', '80']);
    const sum = p.readyInfo.sum;
    const before = snapshot(p.pid);
    const dir = tmpDir('killed-split');
    const cases: Trial[] = [
      { cmd: 'dump', fault: 'splice-pooled', delayMs: 0 },
      { cmd: 'dump', fault: 'splice-filled', delayMs: 0 },
      // Random instants: before, inside and after the copy (its wall varies with the load).
      ...[0, 1, 2, 3, 4, 5].map((i): Trial => ({ cmd: 'dump', fault: null, delayMs: 150 + i * 150 + Math.floor(Math.random() * 150) })),
    ];
    const outcomes: string[] = [];
    for (const [i, t] of cases.entries()) {
      const img = join(dir, String(i));
      const r = await runTsnap(['dump', '--pid', String(p.pid), '--dir', img, '--leave-running', '--no-cow'], t.fault, t.delayMs);
      outcomes.push(r.signal === 'SIGKILL' ? 'killed' : `exit ${r.code}`);
      const what = what0(i, t, outcomes[i]);
      await untraced(p.pid);
      expect(p.alive(), what).toBe(true);
      expect(snapshot(p.pid), what).toEqual(before);
      rmSync(img, { recursive: true, force: true });
    }
    // Both named points are on the split path: the pool's splice and a fill were reached and killed there.
    expect(outcomes.slice(0, 2), outcomes.join(' ')).toEqual(['killed', 'killed']);
    const n = p.lines().length;
    p.writeLine('');
    expect(await p.waitForLine(/^sum=/, 10_000, n)).toBe(`sum=${sum}`);
    expect(await p.waitForLine(/^(PASS|FAIL)/, 10_000, n)).toBe('PASS');
  }, 120_000);

  it('with established TCP connections locked and in repair mode: the connection goes on, repair mode off, SO_REUSEADDR kept, no lock rule left', async () => {
    const p = await startPython(`
import socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('127.0.0.1', 0)); l.listen()
print('READY port=%d' % l.getsockname()[1], flush=True)
c, _ = l.accept()
l.close()
n = 0
for cmd in sys.stdin:
    line = b''
    while not line.endswith(b'\\n'):
        line += c.recv(1)
    n += 1
    c.sendall(b'echo:' + line.strip() + b' n=%d reuse=%d\\n' % (n, c.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)))
`);
    const client = createConnection(Number(p.readyInfo.port), '127.0.0.1');
    await new Promise((res) => client.once('connect', res));
    const got: string[] = [];
    let buf = '';
    client.on('data', (d) => { buf += d; const parts = buf.split('\n'); buf = parts.pop()!; got.push(...parts); });
    const echo = async (word: string, n: number) => {
      client.write(`${word}\n`);
      p.writeLine('serve');
      for (let i = 0; i < 1000 && got.length < n; i++) await new Promise((res) => setTimeout(res, 10));
      return got[n - 1];
    };
    expect(await echo('a', 1)).toBe('echo:a n=1 reuse=1');
    const dir = tmpDir('killed-tcp');
    // Killed with the connection locked, then in repair mode too; dumps
    // that would leave it running, and dumps that would kill it.
    const trials = [['tcp-locked', true], ['tcp-repair', true], ['tcp-locked', false], ['tcp-repair', false]] as const;
    for (const [i, [fault, lr]] of trials.entries()) {
      const args = ['dump', '--pid', String(p.pid), '--dir', join(dir, String(i)), '--tcp-established', ...(lr ? ['--leave-running'] : [])];
      expect((await runTsnap(args, fault, 0)).signal).toBe('SIGKILL');
      await untraced(p.pid);
      // The guardian lifts the lock as it ends: no rule is left behind.
      for (let t = 0; t < 1000 && lockRulesOf(Number(p.readyInfo.port)).length; t++) await new Promise((res) => setTimeout(res, 10));
      expect(lockRulesOf(Number(p.readyInfo.port)), `${fault}${lr ? ' --leave-running' : ''}`).toEqual([]);
      // In repair mode, or locked, the server's reply would never reach the client.
      expect(await echo(`b${i}`, i + 2)).toBe(`echo:b${i} n=${i + 2} reuse=1`);
    }
    expect(client.destroyed).toBe(false);
    client.destroy();
  });
});

/**
 * Credentials: a process that dropped root (another uid, gids, groups, a
 * reduced capability set, securebits, no_new_privs, different per thread)
 * is dumped, and comes back with exactly those, in every thread. Evidence:
 * /proc/PID/task/TID/status of the restored process, and what the restored
 * process itself can and cannot do. What restore could not set is refused.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { readFileSync, writeFileSync, readdirSync, existsSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running } from './helpers/fixtures.js';
import { waitPidsFree } from './helpers/processes.js';
import { tsnap, restoreDetached, killPid, TSNAP_BIN, type CliResult } from './helpers/tsnap.js';
import { ExitCode } from '../src/errors.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

const UID = 18943;
const GID = 58467;
const CRED_KEYS = /^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters):/;
const ALL_OK = 'CHECK main=ok worker=ok bind=ok denied=ok kill1=ok held=ok';

/** The credential lines of every thread's status, keyed by tid. */
function threadCreds(pid: number): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    out[tid] = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8').split('\n').filter((l) => CRED_KEYS.test(l));
  }
  return out;
}

function line(lines: string[], key: string): string {
  return lines.find((l) => l.startsWith(`${key}:`))!.replace(/\s+/g, ' ').trim();
}

async function startCreds(extra: string[] = [], prefix: string[] = []): Promise<{ p: Running; work: string }> {
  const work = tmpDir('tsnap-creds-');
  const denied = join(work, 'secret');
  writeFileSync(denied, 'root only\n', { mode: 0o600 });
  const bin = await compileC('creds');
  const args = [bin, String(UID), String(GID), denied, ...extra];
  const p = prefix.length ? await startProcess(prefix[0], [...prefix.slice(1), ...args]) : await startProcess(args[0], args.slice(1));
  return { p, work };
}

async function check(p: { writeLine(s: string): void; waitForLine(re: RegExp, t?: number, from?: number): Promise<string> }, from: number): Promise<string> {
  p.writeLine('');
  return p.waitForLine(/^CHECK /, 5000, from);
}

/** tsnap run with CAP_NET_BIND_SERVICE out of its bounding set, so out of its permitted set too. */
function tsnapWithoutNetBind(args: string[]): Promise<CliResult> {
  return tsnapWithout('-net_bind_service', args);
}

/** tsnap run with `caps` (setpriv's syntax) out of its bounding set, so out of its permitted set too. */
function tsnapWithout(caps: string, args: string[]): Promise<CliResult> {
  const child = spawn('setpriv', ['--bounding-set', caps, process.execPath, TSNAP_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => { stdout += d; });
  child.stderr!.on('data', (d) => { stderr += d; });
  return new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
}

function untouched(pid: number): void {
  const st = readFileSync(`/proc/${pid}/status`, 'utf8');
  expect(/^TracerPid:\s+0$/m.test(st)).toBe(true);
  expect(/^State:\s+[tT]/m.test(st)).toBe(false);
}

describe('credentials', () => {
  it('a non-root process with per-thread uids, gids, groups, capabilities, securebits and no_new_privs comes back exactly, and behaves as before', async () => {
    // Its rlimits (read from /proc/PID/limits: prlimit64 on another user's
    // process needs CAP_SYS_RESOURCE, which root lacks here) come back too.
    const { p, work } = await startCreds([], ['prlimit', '--nofile=123:456', '--msgqueue=1000:2000']);
    const worker = p.readyInfo.worker;
    expect(await check(p, 0)).toBe(ALL_OK);
    const before = threadCreds(p.pid);
    const limitsBefore = readFileSync(`/proc/${p.pid}/limits`, 'utf8');
    expect(Object.keys(before).sort()).toEqual([String(p.pid), worker].sort());
    // Not root, and the two threads differ: both must survive as they are.
    expect(line(before[p.pid], 'Uid')).toBe(`Uid: ${UID} ${UID + 1} ${UID + 2} ${UID + 2}`);
    expect(line(before[worker], 'Uid')).toBe(`Uid: ${UID} ${UID} ${UID + 2} ${UID}`);
    expect(line(before[p.pid], 'NoNewPrivs')).toBe('NoNewPrivs: 1');
    expect(line(before[worker], 'NoNewPrivs')).toBe('NoNewPrivs: 0');

    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const shown = await tsnap('show', dir);
    expect(shown.stdout).toContain(`credentials (thread ${p.pid}): uid ${UID}/${UID + 1}/${UID + 2}/${UID + 2} gid ${GID}/${GID + 1}/${GID + 2}/${GID}`);

    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.pid).toBe(p.pid);
    expect(threadCreds(r.pid)).toEqual(before);
    expect(line(before[p.pid], 'Groups')).toBe(`Groups: 100 ${GID + 1} ${GID + 2}`);
    expect(line(threadCreds(r.pid)[p.pid], 'Seccomp')).toBe('Seccomp: 0');
    expect(readFileSync(`/proc/${r.pid}/limits`, 'utf8')).toBe(limitsBefore);
    // Each thread compares its own credentials (incl. securebits, fsuid) with
    // those it had; the main thread binds a port below 1024 and is refused a
    // root-only file and kill(1), but reads the one it opened as root (files
    // are restored before the credentials drop privilege).
    expect(await check(r, 0)).toBe(ALL_OK);
  });

  it('a pre-dump (dirty tracking inside another user\'s process) and a delta dump restore with the credentials', async () => {
    const { p, work } = await startCreds();
    const before = threadCreds(p.pid);
    const pre = join(work, 'pre');
    const r1 = await tsnap('pre-dump', '--pid', String(p.pid), '--dir', pre);
    expect(r1.code, r1.stderr).toBe(0);
    // Still itself, untraced, while tracked.
    untouched(p.pid);
    expect(threadCreds(p.pid)).toEqual(before);
    expect(await check(p, 0)).toBe(ALL_OK);
    const fin = join(work, 'fin');
    const r2 = await tsnap('dump', '--pid', String(p.pid), '--dir', fin, '--parent', pre);
    expect(r2.code, r2.stderr).toBe(0);
    await p.exited;
    const r = await restoreDetached(fin, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(threadCreds(r.pid)).toEqual(before);
    expect(await check(r, 0)).toBe(ALL_OK);
  });

  it('a tree: a root master and a python worker that dropped to another user (as nginx does) keep their own credentials', async () => {
    const work = tmpDir('tsnap-creds-tree-');
    // One pipe, master to worker; the worker answers on the stdout they share.
    const script = `
import os, sys
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    os.setgroups([${GID}, 4242]); os.setresgid(${GID}, ${GID}, ${GID}); os.setresuid(${UID}, ${UID}, ${UID})
    for line in os.fdopen(r):
        print(f"WORKER uid={os.getresuid()} gid={os.getresgid()} groups={sorted(os.getgroups())}", flush=True)
    os._exit(0)
os.close(r)
req = os.fdopen(w, 'w')
print(f"READY child={pid}", flush=True)
for line in sys.stdin:
    print("MASTER", os.getresuid(), flush=True)
    req.write("\\n"); req.flush()
`;
    const p = await startProcess('python3', ['-u', '-c', script]);
    const child = Number(p.readyInfo.child);
    const expected = `WORKER uid=(${UID}, ${UID}, ${UID}) gid=(${GID}, ${GID}, ${GID}) groups=[4242, ${GID}]`;
    p.writeLine('');
    expect(await p.waitForLine(/^MASTER/)).toBe('MASTER (0, 0, 0)');
    expect(await p.waitForLine(/^WORKER/)).toBe(expected);
    const before = [threadCreds(p.pid), threadCreds(child)];
    expect(line(before[1][child], 'Uid')).toBe(`Uid: ${UID} ${UID} ${UID} ${UID}`);

    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await waitPidsFree([child]);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    try {
      expect([threadCreds(r.pid), threadCreds(child)]).toEqual(before);
      r.writeLine('');
      expect(await r.waitForLine(/^MASTER/)).toBe('MASTER (0, 0, 0)');
      expect(await r.waitForLine(/^WORKER/)).toBe(expected);
    } finally {
      await killPid(child);
    }
  });

  it('an exited, unreaped child of another user comes back a zombie with its credentials: its parent reaps its uid', async () => {
    const work = tmpDir('tsnap-creds-zombie-');
    const script = `
import os, sys
pid = os.fork()
if pid == 0:
    os.setgroups([4242]); os.setresgid(${GID}, ${GID}, ${GID}); os.setresuid(${UID}, ${UID + 1}, ${UID})
    os._exit(3)
print(f"READY child={pid}", flush=True)
for line in sys.stdin:
    r = os.waitid(os.P_PID, pid, os.WEXITED)
    print(f"REAPED uid={r.si_uid} status={r.si_status}", flush=True)
`;
    const p = await startProcess('python3', ['-u', '-c', script]);
    const child = Number(p.readyInfo.child);
    for (let i = 0; i < 500 && !/^State:\s+Z/m.test(readFileSync(`/proc/${child}/status`, 'utf8')); i++) await new Promise((res) => setTimeout(res, 10));
    const before = threadCreds(child);
    expect(line(before[child], 'Uid')).toBe(`Uid: ${UID} ${UID + 1} ${UID} ${UID + 1}`);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await waitPidsFree([child]);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(/^State:\s+Z/m.test(readFileSync(`/proc/${child}/status`, 'utf8'))).toBe(true);
    expect(threadCreds(child)).toEqual(before);
    r.writeLine('');
    expect(await r.waitForLine(/^REAPED/)).toBe(`REAPED uid=${UID} status=3`);
  });

  it('a capability tsnap lacks is refused at dump, naming it, with the process untouched; a restore without it is refused too', async () => {
    const { p, work } = await startCreds();
    const dir = join(work, 'img');
    const refused = await tsnapWithoutNetBind(['dump', '--pid', String(p.pid), '--dir', dir]);
    expect(refused.code, refused.stderr).toBe(ExitCode.unsupported);
    expect(refused.stderr).toMatch(/CAP_NET_BIND_SERVICE in its permitted set/);
    expect(refused.stderr.trim().split('\n')).toHaveLength(1);
    expect(existsSync(dir) && readdirSync(dir).length > 0).toBe(false);
    untouched(p.pid);
    expect(await check(p, 0)).toBe(ALL_OK);

    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const r = await tsnapWithoutNetBind(['restore', '--dir', dir, '--detach']);
    expect(r.code, r.stderr).toBe(ExitCode.permission);
    expect(r.stderr).toMatch(/CAP_NET_BIND_SERVICE in its permitted set/);
    expect(existsSync(`/proc/${p.pid}`)).toBe(false);
  });

  it('a process in another user namespace (a rootless container\'s root) is refused at dump, the process untouched', async () => {
    // Its full capability set is relative to its namespace: restored in
    // tsnap's, it would be real root.
    const p = await startProcess('unshare', ['--user', '--map-root-user', '/bin/sh', '-c', 'echo READY; exec sleep 1000']);
    const work = tmpDir('tsnap-creds-ns-');
    const dir = join(work, 'img');
    const refused = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(refused.code, refused.stderr).toBe(ExitCode.unsupported);
    expect(refused.stderr).toMatch(new RegExp(`process ${p.pid} is in another user namespace \\(user:\\[\\d+\\]`));
    expect(refused.stderr.trim().split('\n')).toHaveLength(1);
    untouched(p.pid);
    await killPid(p.pid);
  });

  it('a non-root thread under a seccomp filter (with no_new_privs) comes back under it, with its credentials; tsnap without CAP_SYS_ADMIN refuses it, untouched', async () => {
    const { p, work } = await startCreds(['seccomp']);
    const before = threadCreds(p.pid);
    expect(line(before[p.pid], 'Seccomp')).toBe('Seccomp: 2');
    expect(line(before[p.pid], 'Seccomp_filters')).toBe('Seccomp_filters: 1');
    expect(line(before[p.readyInfo.worker], 'Seccomp')).toBe('Seccomp: 0');
    const dir = join(work, 'img');
    // Without CAP_SYS_ADMIN tsnap can neither run its syscalls past the filter nor install it again.
    const refused = await tsnapWithout('-sys_admin', ['dump', '--pid', String(p.pid), '--dir', dir]);
    expect(refused.code, refused.stderr).toBe(ExitCode.unsupported);
    expect(refused.stderr).toMatch(new RegExp(`process ${p.pid} runs under seccomp \\(mode 2, 1 filter\\(s\\)\\) and tsnap lacks CAP_SYS_ADMIN`));
    untouched(p.pid);
    expect(await check(p, 0)).toBe(ALL_OK);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const noAdmin = await tsnapWithout('-sys_admin', ['restore', '--dir', dir, '--new-pid', '--detach', '--pidfile', join(work, 'pid2')]);
    expect(noAdmin.code, noAdmin.stderr).toBe(ExitCode.permission);
    expect(noAdmin.stderr).toMatch(/the image has seccomp filters and tsnap lacks CAP_SYS_ADMIN/);
    expect(existsSync(join(work, 'pid2'))).toBe(false);
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(threadCreds(r.pid)).toEqual(before);
    expect(await check(r, 0)).toBe(ALL_OK);
  });
});

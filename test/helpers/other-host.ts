/**
 * "Another host" on this one, for migration tests and bench/migration.ts:
 * `tsnap serve` in a network namespace of its own, reached over a veth
 * pair, and in a pid namespace of its own, so that the source's pid is
 * free there at once, as on a second machine (no waiting for this host's
 * init to reap the killed source).
 *
 * Inside the pid namespace, pid 1 is a tiny init (compiled from INIT_C
 * below) and not tsnap serve: orphans of the namespace (a migrated tree's
 * children whose parent ends) are reparented to pid 1, and a pid 1 that
 * does not reap them would keep their pids taken for the next restore.
 * `--mount-proc` gives the namespace its own /proc: restore reads and
 * checks pids there, as the namespace numbers them. clone3's set_tid then
 * asks for the pid in the namespace (the process gets another one here).
 *
 * Nothing is left behind: the namespaces are unnamed (no `ip netns add`,
 * so no bind mount under /run/netns), made by `unshare`; killing it
 * (--kill-child) kills pid 1, which makes the kernel kill the whole pid
 * namespace, and the network namespace goes with its last process, taking
 * both ends of the veth; the /proc mount lives in the namespace's own
 * mount namespace. A veth whose owner died before its cleanup (a SIGKILLed
 * test worker whose namespace somehow lives on) is swept by the next
 * start. This module has no vitest dependency, so that the bench can use
 * it.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const INIT_C = `
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
static pid_t child;
static void forward(int s) { if (child > 0) kill(child, s); }
int main(int argc, char **argv) {
  if (argc < 2) return 2;
  signal(SIGTERM, forward);
  signal(SIGINT, forward);
  signal(SIGHUP, forward);
  child = fork();
  if (child == 0) { execvp(argv[1], argv + 1); perror(argv[1]); _exit(127); }
  for (;;) {
    int st;
    pid_t p = wait(&st);
    if (p < 0 && errno == EINTR) continue;
    if (p < 0) return 0;
    if (p == child) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }
}
`;

function initBinary(): string {
  const hash = createHash('sha256').update(INIT_C).digest('hex').slice(0, 12);
  const dir = join(tmpdir(), 'tsnap-fixtures');
  const bin = join(dir, `nsinit-${hash}`);
  if (!existsSync(bin)) {
    mkdirSync(dir, { recursive: true });
    const src = `${bin}.${process.pid}.c`;
    writeFileSync(src, INIT_C);
    execFileSync('cc', ['-O2', '-o', `${bin}.${process.pid}`, src]);
    execFileSync('mv', ['-f', `${bin}.${process.pid}`, bin]);
  }
  return bin;
}

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function tryIp(...args: string[]): void {
  try { ip(...args); } catch { /* already gone */ }
}

/** Veths of owners that are gone (killed before their cleanup). */
function sweepDead(): void {
  for (const name of linkNames()) {
    const m = /^toh(\d+)x\d+$/.exec(name);
    if (m && Number(m[1]) !== process.pid % 1_000_000 && !existsSync(`/proc/${m[1]}`)) tryIp('link', 'del', name);
  }
}

function linkNames(): string[] {
  return ip('-o', 'link', 'show').split('\n').map((l) => l.split(': ')[1]?.split('@')[0] ?? '').filter(Boolean);
}

function vethName(owner: number, n: number): string {
  return `toh${owner % 1_000_000}x${n}`.slice(0, 15);
}

export interface OtherHost {
  /** Where the sender connects: the receiver's address on the veth. */
  host: string;
  port: number;
  /** `tsnap serve --json` events so far. */
  events: string[];
  proc: ChildProcess;
  /** This host's pid of a process the receiver knows as `nsPid` (its restored process), or null. */
  hostPid(nsPid: number): number | null;
  /** Kills everything in the namespaces and removes them. Safe to call more than once. */
  stop(): Promise<void>;
}

let seq = 0;

/** A /30 no interface here uses yet (other test workers make theirs at the same time). */
function freeSubnet(): { here: string; there: string } {
  const used = ip('-o', '-4', 'addr', 'show');
  for (let i = 0; i < 4096; i++) {
    const k = (process.pid * 7 + seq * 13 + i) % 16384;
    const base = `10.213.${k >> 6}.${(k & 63) * 4}`;
    const [a, b, c, d] = base.split('.').map(Number);
    const here = `${a}.${b}.${c}.${d + 1}`;
    const there = `${a}.${b}.${c}.${d + 2}`;
    if (!used.includes(` ${here}/`) && !used.includes(` ${there}/`)) return { here, there };
  }
  throw new Error('no free 10.213.x.y/30 for a veth');
}

/**
 * Starts `tsnap serve` (`tsnapBin` with `serveArgs`, listening on
 * HOST:PORT given here) in fresh network and pid namespaces.
 */
export async function startOtherHost(tsnapBin: string, serveArgs: string[], opts: { port?: number; env?: Record<string, string> } = {}): Promise<OtherHost> {
  sweepDead();
  const n = seq++;
  const veth = vethName(process.pid, n);
  const peer = `${veth}p`.slice(0, 15);
  const { here, there } = freeSubnet();
  const port = opts.port ?? 7707;
  let proc: ChildProcess | null = null;
  let init: number | undefined;
  const stop = async () => {
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise((r) => proc!.once('exit', r));
      try { process.kill(proc.pid!, 'SIGKILL'); } catch { /* gone */ }
      await exited;
    }
    // pid 1 of the namespace dies with unshare (--kill-child), the kernel kills the rest, and
    // the network namespace goes with them; its veth end too, and with it ours.
    // A serve that counted syscalls (its perf counters' release waits for RCU
    // grace periods) takes a moment to exit, and its init waits for it.
    for (let i = 0; i < 500 && init !== undefined && alive(init); i++) await new Promise((r) => setTimeout(r, 20));
    if (linkNames().includes(veth)) tryIp('link', 'del', veth);
  };
  try {
    // serve starts once the namespace's network is set up: its shell waits for a line on stdin.
    proc = spawn('unshare', ['--net', '--pid', '--fork', '--kill-child', '--mount-proc', initBinary(),
      'sh', '-c', 'read go && exec "$@"', 'sh', process.execPath, tsnapBin, 'serve', '--listen', `${there}:${port}`, '--json', ...serveArgs],
    { stdio: ['pipe', 'ignore', 'pipe'], env: { ...process.env, ...opts.env } });
    const p = proc;
    init = await childOf(p.pid!);
    liveInits.push(init);
    ip('link', 'add', veth, 'type', 'veth', 'peer', 'name', peer);
    ip('link', 'set', peer, 'netns', String(init));
    ip('addr', 'add', `${here}/30`, 'dev', veth);
    ip('link', 'set', veth, 'up');
    const inNs = (...args: string[]) => execFileSync('nsenter', ['-t', String(init), '-n', 'ip', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    inNs('addr', 'add', `${there}/30`, 'dev', peer);
    inNs('link', 'set', peer, 'up');
    inNs('link', 'set', 'lo', 'up');
    p.stdin!.end('go\n');
    const events: string[] = [];
    await new Promise<void>((resolve, reject) => {
      p.stderr!.on('data', (d) => {
        events.push(...String(d).trim().split('\n'));
        if (events.some((e) => e.includes('"listening"'))) resolve();
      });
      p.once('exit', () => reject(new Error(`serve in its namespaces exited: ${events.join('\n')}`)));
    });
    const nsOf = (pid: number) => { try { return readlinkSync(`/proc/${pid}/ns/pid`); } catch { return null; } };
    const want = nsOf(init);
    const hostPid = (nsPid: number): number | null => {
      for (const name of readdirSync('/proc')) {
        if (!/^\d+$/.test(name) || nsOf(Number(name)) !== want) continue;
        try {
          const nspid = /^NSpid:\s*(.*)$/m.exec(readFileSync(`/proc/${name}/status`, 'utf8'))?.[1].trim().split(/\s+/);
          if (nspid && Number(nspid.at(-1)) === nsPid) return Number(name);
        } catch { /* gone */ }
      }
      return null;
    };
    return { host: there, port, events, proc: p, hostPid, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** The unshare's first child: pid 1 of the new namespaces, as this host numbers it. */
async function childOf(pid: number): Promise<number> {
  for (let i = 0; i < 500; i++) {
    try {
      const c = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
      if (c) return Number(c.split(/\s+/)[0]);
    } catch { break; }
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('unshare did not start the namespace');
}

/** What this process has left of its "other hosts": veths, and network namespaces still alive (for a test's "nothing left" check). */
export function leftovers(): string[] {
  const links = linkNames().filter((n) => n.startsWith(`toh${process.pid % 1_000_000}x`));
  return [...links, ...liveInits.filter(alive).map((pid) => `namespace init ${pid}`)];
}

const liveInits: number[] = [];

/** Not gone, and not a zombie either (its namespaces are gone with its death). */
function alive(pid: number): boolean {
  try { return !/^State:\s+[ZX]/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')); } catch { return false; }
}

/** Processes of another pid namespace whose pid there is `nsPid`, as pids of ours. */
export function inOtherPidNs(nsPid: number): number[] {
  const ours = readlinkSync('/proc/self/ns/pid');
  const found: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const ns = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${d}/status`, 'utf8'))?.[1].trim().split(/\s+/).map(Number) ?? [];
      if (ns.length > 1 && ns[ns.length - 1] === nsPid && readlinkSync(`/proc/${d}/ns/pid`) !== ours) found.push(Number(d));
    } catch { /* gone */ }
  }
  return found;
}

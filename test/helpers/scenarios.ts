/**
 * The four ways a real program meets tsnap, one after the other on ONE
 * running program with ONE client connection that lives through all of
 * them (starting the program is what costs; the scenarios are cheap):
 *
 *   leave-running   dump --leave-running: the original goes on
 *   pre-dump chain  pre-dump, pre-dump --parent, dump --parent (kill), restore
 *   kill            dump (kill), restore
 *   migrate         migrate to a tsnap serve --restore
 *
 * After each one `check` talks to the program over that same connection:
 * what it answers proves its state and the connection came through.
 *
 * Restores run in the foreground (no --detach): the restored program is
 * tsnap's child, so when the next dump kills it, it is reaped at once and
 * its pid is free for the next restore (init reaps orphans 1.3-2 s late here).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { expect } from 'vitest';
import { TSNAP_BIN, tsnap } from './tsnap.js';
import { startServe } from './serve.js';
import { LineLog } from './lines.js';
import { descendantsOf, markedProcesses, OWNER, registerPid, trackChild, trackRestored, waitPidsFree } from './processes.js';

export type Scenario = 'leave-running' | 'pre-dump chain' | 'kill' | 'migrate';
export const SCENARIOS: Scenario[] = ['leave-running', 'pre-dump chain', 'kill', 'migrate'];

export interface ScenarioTarget {
  pid: number;
  /** Resolves once the process is gone (killed by a dump) and reaped. */
  exited: Promise<unknown>;
}

export interface ScenarioOptions {
  work: string;
  /** A process tree (postgres): --tree everywhere, and its members' pids must be free before a restore. */
  tree?: boolean;
  /** Called after each scenario, and once before the first (as 'start'), with the pid the program runs as. */
  check(step: Scenario | 'start', pid: number): Promise<void>;
}

/** A restore in the foreground: resolves once the process runs; `exited` once tsnap has reaped it. */
async function restoreForeground(dir: string, pidfile: string): Promise<ScenarioTarget> {
  const child: ChildProcess = spawn(process.execPath, [TSNAP_BIN, 'restore', '--dir', dir, '--pidfile', pidfile, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  trackChild(child);
  child.stdout!.resume(); // the restored program's output: it must never block on a full pipe
  const exited = new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
  // Its report says the process runs (it waits for the process after that).
  const log: LineLog = new LineLog(`restore of ${dir}`, (): string => log.lines.join('\n')).follow(child.stderr);
  const line = await log.waitFor(/"command":"restore"/, 120_000, 0, 'its report').catch(() => null);
  expect(line !== null && existsSync(pidfile), `restore of ${dir}: ${log.lines.join('\n')}`).toBe(true);
  const report = JSON.parse(line!) as { pid: number; pids?: { pid: number }[]; warnings: string[] };
  // Its own check of the rebuilt process against the image found no difference.
  expect(report.warnings, `restore of ${dir}`).toEqual([]);
  trackRestored(report.pid);
  for (const p of report.pids ?? []) trackRestored(p.pid);
  return { pid: report.pid, exited };
}

/** Not traced, not stopped, no userfaultfd of tsnap's: nothing of the dump is left in it. */
function expectUntouched(pid: number): void {
  for (const p of [pid, ...descendantsOf(pid)]) {
    let st: string;
    try { st = readFileSync(`/proc/${p}/status`, 'utf8'); } catch { continue; } // a member that just ended
    expect(/^TracerPid:\s+0$/m.test(st), `${p} traced`).toBe(true);
    expect(/^State:\s+[tT]/m.test(st), `${p} stopped`).toBe(false);
    let fds: string[];
    try { fds = readdirSync(`/proc/${p}/fd`); } catch { continue; }
    const links = fds.map((fd) => { try { return readlinkSync(`/proc/${p}/fd/${fd}`); } catch { return ''; } });
    expect(links.filter((l) => /userfaultfd/.test(l)), `${p} fds`).toEqual([]);
  }
}

/**
 * Every scenario, in an order that keeps each restore cheap: the original
 * (the test's own child) is left running, then killed by the chain's dump;
 * the restored one by the plain dump; the restored one again by migrate.
 * Returns the pid the program finally runs as (on the receiver), for the
 * test to kill (with killTree) when it is done with it.
 */
export async function runScenarios(first: ScenarioTarget, o: ScenarioOptions): Promise<number> {
  const tree = o.tree ? ['--tree'] : [];
  const ok = (r: { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }, what: string) =>
    expect(r.code, `${what}: exit ${r.code ?? r.signal}: ${r.stderr}${r.stdout}`).toBe(0);
  let cur = first;
  // A client that gets no answer says after which scenario (an assertion says it itself).
  const check = async (step: Scenario | 'start') => {
    try {
      await o.check(step, cur.pid);
    } catch (e) {
      if (e instanceof Error && !('actual' in e)) e.message = `after ${step}: ${e.message}`;
      throw e;
    }
  };
  await check('start');

  ok(await tsnap('dump', ...tree, '--leave-running', '--tcp-established', '--pid', String(cur.pid), '--dir', join(o.work, 'lr')), 'dump --leave-running');
  expectUntouched(cur.pid);
  await check('leave-running');

  // A tree's members are orphans once their root is killed: init reaps them late.
  let members: number[] = [];
  const before = () => { members = o.tree ? descendantsOf(cur.pid) : []; };
  const dieAndRestore = async (dir: string, pidfile: string) => {
    await cur.exited;
    await waitPidsFree(members, 10_000);
    cur = await restoreForeground(dir, pidfile);
  };

  const chain = join(o.work, 'chain');
  ok(await tsnap('pre-dump', ...tree, '--pid', String(cur.pid), '--dir', join(chain, '1')), 'pre-dump');
  await check('pre-dump chain');
  ok(await tsnap('pre-dump', ...tree, '--pid', String(cur.pid), '--dir', join(chain, '2'), '--parent', join(chain, '1')), 'pre-dump --parent');
  before();
  ok(await tsnap('dump', ...tree, '--tcp-established', '--pid', String(cur.pid), '--dir', join(chain, '3'), '--parent', join(chain, '2')), 'dump --parent');
  await dieAndRestore(join(chain, '3'), join(o.work, 'chain.pid'));
  await check('pre-dump chain');

  before();
  ok(await tsnap('dump', ...tree, '--tcp-established', '--pid', String(cur.pid), '--dir', join(o.work, 'kill')), 'dump');
  await dieAndRestore(join(o.work, 'kill'), join(o.work, 'kill.pid'));
  await check('kill');

  const srv = await startServe(join(o.work, 'in'), ['--restore', '--count', '1']);
  before();
  ok(await tsnap('migrate', ...tree, '--tcp-established', '--pid', String(cur.pid), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--max-iterations', '3'), 'migrate');
  await cur.exited;
  for (let i = 0; i < 1500 && !srv.events.some((e) => e.includes('"restored"')); i++) await new Promise((res) => setTimeout(res, 20));
  expect(srv.events.some((e) => e.includes('"restored"')), srv.events.join('\n')).toBe(true);
  // The receiver's restore found no difference either and warned of nothing (the token warning is about the sender's command line).
  expect(srv.events.filter((e) => e.includes('"warning"') && !e.includes('--token is visible')), 'the receiver\'s restore').toEqual([]);
  // Moved to the same pids (the receiver waited for them to be free).
  for (const p of [cur.pid, ...members]) registerPid(p);
  await check('migrate');
  // The sender's guardian finishes after the sender has exited (on EOF): let it end by itself.
  const guardians = () => markedProcesses((x) => x === OWNER).filter((g) => { try { return readFileSync(`/proc/${g}/comm`, 'utf8').trim() === 'tsnap-guardian'; } catch { return false; } });
  for (let i = 0; i < 500 && guardians().length; i++) await new Promise((res) => setTimeout(res, 10));
  expect(guardians(), 'guardians left behind').toEqual([]);
  return cur.pid;
}

/**
 * One client connection, used request by request: each request waits for
 * its whole answer (`complete` says when the text received so far is one).
 */
export class Conversation {
  private buf = '';
  private waiter: (() => void) | null = null;
  readonly problems: string[] = [];

  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => { this.buf += d; this.waiter?.(); });
    sock.on('error', (e) => { this.problems.push(`error: ${e.message}`); this.waiter?.(); });
    sock.on('close', () => { this.problems.push('the connection closed'); this.waiter?.(); });
  }

  static async open(port: number, host = '127.0.0.1'): Promise<Conversation> {
    for (let i = 0; ; i++) {
      const sock = connect(port, host);
      const err = await new Promise<Error | null>((res) => { sock.once('connect', () => res(null)); sock.once('error', res); });
      if (!err) return new Conversation(sock);
      sock.destroy();
      // The program may not listen yet (memcached says nothing when it does).
      if (i >= 500) throw err;
      await new Promise((res) => setTimeout(res, 10));
    }
  }

  /** Sends `text`, resolves with the answer (without its terminator handling: `complete` decides). */
  async ask(text: string, complete: (got: string) => boolean = (g) => g.endsWith('\n'), timeoutMs = 20_000): Promise<string> {
    expect(this.problems).toEqual([]);
    this.buf = '';
    this.sock.write(text);
    const until = Date.now() + timeoutMs;
    while (!complete(this.buf)) {
      if (this.problems.length) throw new Error(`${JSON.stringify(text)}: ${this.problems.join('; ')} (got ${JSON.stringify(this.buf)})`);
      const left = until - Date.now();
      if (left <= 0) throw new Error(`${JSON.stringify(text)}: no complete answer in ${timeoutMs} ms (got ${JSON.stringify(this.buf)})`);
      await new Promise<void>((res) => { const t = setTimeout(res, left); this.waiter = () => { clearTimeout(t); res(); }; });
      this.waiter = null;
    }
    const got = this.buf;
    this.buf = '';
    return got;
  }

  /** One line in, one line out. */
  async line(text: string): Promise<string> {
    return (await this.ask(`${text}\n`)).replace(/\r?\n$/, '');
  }

  end(): void { this.sock.destroy(); }
}

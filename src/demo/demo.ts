/**
 * `tsnap demo` / `npm run demo`: the main job, on a sample process, step by
 * step with sizes and times: start a workload, pre-dump it twice while it
 * runs, dump it (the last delta, frozen), show and verify the chain,
 * restore it, and show it going on from where it stopped.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { preDump, dump } from '../dump/dump.js';
import { restore, waitForExit } from '../restore/restore.js';
import { verify } from '../image/verify.js';
import { setCloexec, kill } from '../sys/index.js';
import { formatBytes, formatUs } from '../format.js';
import { TsnapError } from '../errors.js';

export interface DemoOptions {
  dir?: string;
  keep?: boolean;
  print: (text: string) => void;
  warn?: (msg: string) => void;
}

const WORKLOAD = fileURLToPath(new URL('./workload.js', import.meta.url));

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new TsnapError('internal', `demo: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function ticks(log: string): string[] {
  return existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter((l) => l.startsWith('tick ')) : [];
}

export async function runDemo(o: DemoOptions): Promise<void> {
  const p = o.print;
  // tsnap's own inherited fds must not leak into the workload (it would hold them).
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const root = o.dir ?? mkdtempSync(join(tmpdir(), 'tsnap-demo-'));
  if (o.dir) mkdirSync(root, { recursive: true, mode: 0o700 });
  const log = join(root, 'workload.log');
  let pid = 0;
  let restoredPid = 0;
  try {
    p(`1. start a sample workload: node, 32 MiB of state it keeps writing and checking (output: ${log})\n`);
    // Started through sh so that this process is not its parent: the restore below brings back the same pid.
    const sh = spawn('sh', ['-c', `${JSON.stringify(process.execPath)} ${JSON.stringify(WORKLOAD)} >>${JSON.stringify(log)} 2>&1 </dev/null & echo $!`], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    sh.stdout!.on('data', (d) => { out += d; });
    await new Promise((r) => sh.on('close', r));
    pid = Number(out.trim());
    await until(() => ticks(log).length >= 3, 10_000, 'the workload to start');
    p(`   running as pid ${pid}: ${ticks(log).pop()}\n\n`);

    const step = async (n: number, what: string, f: () => Promise<{ dir: string; stats: { bytesStored: number; pagesWritten: number; frozenUs: number; totalUs: number } }>) => {
      const r = await f();
      p(`${n}. ${what}\n   ${r.dir}: ${r.stats.pagesWritten} pages, ${formatBytes(r.stats.bytesStored)} stored in ${formatUs(r.stats.totalUs)}; the workload was stopped for ${formatUs(r.stats.frozenUs)}\n\n`);
      return r;
    };
    const d1 = join(root, 'img', '1');
    const d2 = join(root, 'img', '2');
    const d3 = join(root, 'img', '3');
    await step(2, 'pre-dump while it runs: all of its memory, and write tracking from now on (tsnap pre-dump)', () => preDump({ pid, dir: d1, warn: o.warn }));
    await new Promise((r) => setTimeout(r, 600));
    await step(3, 'pre-dump again: only the pages it wrote since (tsnap pre-dump --parent)', () => preDump({ pid, dir: d2, parent: d1, warn: o.warn }));
    await new Promise((r) => setTimeout(r, 600));
    const lastBefore = () => ticks(log).pop() ?? '';
    const before = lastBefore();
    await step(4, 'dump: frozen only for the last delta and its state, then killed (tsnap dump --parent)', () => dump({ pid, dir: d3, parent: d2, warn: o.warn }));
    const atDump = ticks(log).length;
    const lastTick = ticks(log).pop() ?? before;
    p(`   its last words: ${lastTick}\n\n`);

    const v = verify(d3);
    p('5. the chain (tsnap show / tsnap verify): every checksum checked, every parent present\n');
    for (const c of [...v.processes[0].chain].reverse()) p(`   ${c.dir}: ${c.kind} ${c.contents}, ${formatBytes(c.bytesStored)}\n`);
    p('\n');

    await until(() => !existsSync(`/proc/${pid}`), 30_000, `pid ${pid} to be free`);
    const r = await restore({ dir: d3, stdin: '/dev/null', stdout: log, stderr: log, warn: o.warn });
    restoredPid = r.pid;
    p(`6. restore (tsnap restore): pid ${r.pid} again, ${formatBytes(r.stats.bytesRestored)} of memory in ${formatUs(r.stats.restoreUs)}\n`);
    // What it printed since the dump (it may already have printed before restore returned).
    await until(() => ticks(log).length >= atDump + 3, 10_000, 'the restored workload to go on');
    const after = ticks(log).slice(atDump, atDump + 3);
    p(`   it goes on where it stopped: ${lastTick} -> ${after.join(', ')}\n`);
    const corrupt = ticks(log).filter((l) => l.includes('CORRUPT'));
    if (corrupt.length) throw new TsnapError('internal', `demo: the restored workload found its memory damaged: ${corrupt[0]}`);
    p(`\nDone. ${o.keep ? `The images stay in ${join(root, 'img')}.` : 'Run with --keep to look at the images (tsnap show DIR).'}\n`);
  } finally {
    for (const victim of [restoredPid, pid]) {
      if (victim && existsSync(`/proc/${victim}`)) { try { kill(victim, 9); } catch { /* gone */ } }
    }
    if (restoredPid) await waitForExit(restoredPid);
    if (!o.keep && !o.dir) rmSync(root, { recursive: true, force: true });
  }
}

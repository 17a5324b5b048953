/**
 * The background pager of `tsnap restore --lazy --detach`: it takes the
 * uffds and the state of the worker that served faults during the restore
 * (one JSON line on stdin, the fds named as tsnap's and taken with
 * pidfd_getfd), answers "ok", and fills until every page is in. Started at
 * the beginning of the restore, it says "booted" once its modules are loaded.
 */
import { createInterface } from 'node:readline';
import { closeSync, writeSync } from 'node:fs';
import { pidfdOpen, pidfdGetfd } from '../sys/index.js';
import { PagerHost, type HostState } from './pager-host.js';

const log = (m: string) => { try { writeSync(2, `${m}\n`); } catch { /* no log */ } };

async function main(): Promise<number> {
  process.stdout.write('booted\n');
  const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const first = await lines.next();
  if (first.done) return 0; // tsnap kept the pager (or failed): nothing to do
  const msg = JSON.parse(first.value) as { tsnapPid: number; guardFd: number; fillDelayMs: number; state: HostState };
  let host: PagerHost;
  try {
    const pidfd = pidfdOpen(msg.tsnapPid);
    const take = (fd: number) => pidfdGetfd(pidfd, fd);
    const state: HostState = { sources: msg.state.sources, contexts: msg.state.contexts.map((c) => ({ ...c, fd: take(c.fd) })) };
    const guardFd = take(msg.guardFd);
    closeSync(pidfd);
    host = PagerHost.fromState(state, guardFd, log, msg.fillDelayMs);
  } catch (err) {
    process.stdout.write(`failed ${(err as Error).message}\n`);
    return 1;
  }
  process.stdout.write('ok\n');
  process.stdin.destroy();
  const end = await host.run();
  if (end.how === 'failed') return 1;
  return 0;
}

main().then((code) => process.exit(code), (err) => { log(`tsnap lazy pager: ${(err as Error)?.stack ?? err}`); process.exit(2); });

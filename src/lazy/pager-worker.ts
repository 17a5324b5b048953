/**
 * The pager of `tsnap restore --lazy` while tsnap runs: a worker thread, so
 * that faults are served while the main thread is blocked in waitpid()
 * driving the new task (lazy-restore.ts). Messages: add (a registered
 * uffd and its page source), release (the process runs: fill in the
 * background), stop (for a handover), resume (the handover failed).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { writeSync } from 'node:fs';
import { PagerHost, type HostEnd, type SourceSpec } from './pager-host.js';

const { guardFd, logFd, fillDelayMs } = workerData as { guardFd: number; logFd: number; fillDelayMs: number };
const port = parentPort!;
const host = new PagerHost(guardFd, (m) => { try { writeSync(logFd, `${m}\n`); } catch { /* no log */ } }, fillDelayMs, true);
let running = false;

function run(): void {
  running = true;
  void host.run().then((end: HostEnd) => {
    running = false;
    port.postMessage({ op: 'ended', end, state: end.how === 'stopped' ? host.exportState() : null });
  });
}

port.on('message', (m: { op: string; fd?: number; name?: string; source?: SourceSpec }) => {
  switch (m.op) {
    case 'add': {
      const i = host.addSource(m.source!);
      host.addContext({ fd: m.fd!, name: m.name!, source: i });
      if (!running) run();
      port.postMessage({ op: 'added' });
      break;
    }
    case 'release': host.pager.hold = false; break;
    case 'stop': host.pager.stop(); break;
    case 'resume': host.pager.resume(); if (!running) run(); break;
  }
});
port.postMessage({ op: 'ready' });

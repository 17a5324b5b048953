/**
 * The thread of SmapsReader (smaps-reader.ts): reads /proc/PID/smaps, whose
 * page-table walk is the longest single step of a frozen large process,
 * while the main thread asks the frozen task for its state.
 */
import { parentPort } from 'node:worker_threads';
import { readFileSync } from 'node:fs';
import { parseVmFlags } from './smaps.js';

parentPort!.on('message', (m: { pid: number } | 'stop') => {
  if (m === 'stop') { parentPort!.close(); return; }
  try {
    parentPort!.postMessage({ flags: parseVmFlags(readFileSync(`/proc/${m.pid}/smaps`, 'utf8')) });
  } catch (err) {
    parentPort!.postMessage({ error: String((err as Error).message) });
  }
});
parentPort!.postMessage('ready');

/** A `tsnap serve` for migration tests, killed by pid after each test. */
import { spawn, type ChildProcess } from 'node:child_process';
import { afterEach } from 'vitest';
import { TSNAP_BIN } from './tsnap.js';
import { killPid } from './processes.js';

const servers: ChildProcess[] = [];

export function useServeCleanup(): void {
  afterEach(async () => {
    for (const s of servers.splice(0)) await killPid(s.pid!);
  });
}

let nextPort = 18900 + (process.pid % 300);

/** Starts `tsnap serve` on a loopback port with token "sesame"; resolves once it listens. */
export async function startServe(dir: string, extra: string[] = []): Promise<{ port: number; proc: ChildProcess; events: string[] }> {
  const port = nextPort++;
  const proc = spawn(process.execPath, [TSNAP_BIN, 'serve', '--listen', `127.0.0.1:${port}`, '--dir', dir, '--token', 'sesame', '--json', ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
  servers.push(proc);
  const events: string[] = [];
  await new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (d) => {
      events.push(...String(d).trim().split('\n'));
      if (events.some((e) => e.includes('"listening"'))) resolve();
    });
    proc.once('exit', () => reject(new Error(`serve exited: ${events.join('\n')}`)));
  });
  return { port, proc, events };
}

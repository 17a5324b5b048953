/** A `tsnap serve` for migration tests, ended after each test (processes.ts useProcessCleanup). */
import { spawn, type ChildProcess } from 'node:child_process';
import { TSNAP_BIN } from './tsnap.js';
import { trackChild, useProcessCleanup } from './processes.js';
import { LineLog } from './lines.js';

/** The same cleanup as useProcessCleanup; kept under this name so that test files written against it still work. */
export const useServeCleanup = useProcessCleanup;

/**
 * Starts `tsnap serve` on a loopback port with token "sesame"; resolves once
 * it listens. The port is the kernel's choice (port 0, as its "listening"
 * event says): ports counted from a base per worker collided between
 * workers, and a sender then reached another test's receiver (same token).
 */
export async function startServe(dir: string, extra: string[] = [], prefix: string[] = [], env: Record<string, string> = {}): Promise<{ port: number; proc: ChildProcess; events: string[] }> {
  // `prefix`: a command serve runs under (unshare, for a pid namespace of its own); `env`: merged over ours.
  const argv = [...prefix, process.execPath, TSNAP_BIN, 'serve', '--listen', '127.0.0.1:0', '--dir', dir, '--token', 'sesame', '--json', ...extra];
  const proc = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  trackChild(proc);
  // One JSON event per line, also when a line comes in two reads.
  const log: LineLog = new LineLog('tsnap serve', (): string => log.lines.join('\n')).follow(proc.stderr);
  const listening = await log.waitFor(/"listening"/, 30_000, 0, 'its "listening" event');
  return { port: (JSON.parse(listening) as { port: number }).port, proc, events: log.lines };
}

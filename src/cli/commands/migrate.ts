/** `tsnap migrate`: pre-copy a running process to a `tsnap serve`. */
import { Option, type Command } from 'commander';
import { ExitCode, TsnapError } from '../../errors.js';
import { formatBytes, formatUs } from '../../format.js';
import type { CliContext } from '../context.js';
import { addTokenOptions, compressOption, intOption, jsonOption, parseHostPort, parseRate, pidOption, type Codec } from '../options.js';
import { jsonLine } from '../json-docs.js';
import { readToken } from '../token.js';

interface MigrateFlags {
  pid: number; to: string; token?: string; tokenFile?: string; downtimeMs: number; maxIterations: number; bandwidthLimit?: number;
  leaveRunning?: boolean; tree?: boolean; tcpEstablished?: boolean; autoConverge: boolean; compress: Codec; tls?: boolean; tlsCa?: string; tlsInsecure?: boolean; json?: boolean; postcopy?: true | 'on' | 'auto'; peerTimeout: number;
}

export function registerMigrate(program: Command, ctx: CliContext): void {
  const cmd = program.command('migrate')
    .description('move a running process to a tsnap serve, with a downtime of the last small delta')
    .addOption(pidOption('process to migrate'))
    .requiredOption('--to <host:port>', 'the receiving tsnap serve');
  addTokenOptions(cmd, 'shared secret of the receiver')
    .option('--downtime-ms <ms>', 'freeze once the last round fits this budget', intOption('--downtime-ms', 1, 3_600_000), 50)
    .option('--max-iterations <n>', 'at most N pre-copy rounds (0: none, with --postcopy)', intOption('--max-iterations', 0, 1000), 10)
    .option('--bandwidth-limit <rate>', 'cap the sending rate (e.g. 100M bytes/s)', parseRate)
    .option('-R, --leave-running', 'keep the source running after the receiver has the image')
    .option('-t, --tree', 'migrate the process and all its descendants')
    .option('--tcp-established', 'take established TCP connections along (TCP repair mode; the peer must reach the receiver at the same address)')
    .addOption(new Option('--postcopy [when]', 'resume on the receiver right after the state; the last round\'s pages follow on demand ("auto": only when pre-copy does not converge). Risk: a connection lost before every page is in loses the process').choices(['on', 'auto']))
    .option('--peer-timeout <seconds>', 'give up on a receiver that makes no progress for this long while the source is frozen, before the commit (the source runs on); after the commit, warn and keep waiting (0: no limit)', peerSeconds, 10)
    .option('--no-auto-converge', 'do not throttle a source that writes faster than the link (cgroup cpu quota, 20% then +10% per round)')
    .addOption(compressOption())
    .option('--tls', 'connect with TLS')
    .option('--tls-ca <file>', 'CA certificate to verify the receiver with')
    .option('--tls-insecure', 'do not verify the receiver\'s certificate')
    .addOption(jsonOption('one JSON event per line, then the report'))
    .addHelpText('after', '\nExample:\n  tsnap migrate --pid 1234 --to 10.0.0.2:7707 --token-file /etc/tsnap/token --downtime-ms 50')
    .action((o: MigrateFlags) => runMigrate(o, ctx));
}

async function runMigrate(o: MigrateFlags, ctx: CliContext): Promise<void> {
  const { host, port } = parseHostPort(o.to, '127.0.0.1');
  const out = ctx.out(o.json);
  const token = readToken(o, o.json ? (message) => process.stderr.write(`${JSON.stringify({ event: 'warning', message })}\n`) : ctx.warn);
  const { migrate } = await import('../../migrate/sender.js');
  const r = await migrate({
    pid: o.pid, host, port, token, downtimeMs: o.downtimeMs, maxIterations: o.maxIterations,
    bandwidthLimit: o.bandwidthLimit, leaveRunning: !!o.leaveRunning, compression: o.compress, tree: !!o.tree, tcpEstablished: !!o.tcpEstablished,
    peerTimeoutMs: o.peerTimeout * 1000,
    // A frozen source waiting on a silent receiver is never kept quiet (--quiet hides warnings).
    warnFrozen: (message) => process.stderr.write(o.json ? `${JSON.stringify({ event: 'warning', message })}\n` : `tsnap: warning: ${message}\n`),
    whenNotConverging: o.autoConverge === false ? 'stop' : 'throttle',
    ...(o.postcopy ? { postcopy: o.postcopy === 'auto' ? 'auto' as const : 'on' as const } : {}),
    tls: o.tls || o.tlsCa || o.tlsInsecure ? { ca: o.tlsCa, insecure: !!o.tlsInsecure } : undefined,
    warn: ctx.warn, onProgress: ctx.progress('sending the memory of'),
    onEvent: (e) => (o.json ? process.stderr.write(`${JSON.stringify(e)}\n`) : out.step(`migrate: ${Object.entries(e).map(([k, v]) => `${k}=${v}`).join(' ')}`)),
  });
  if (o.json) out.result(jsonLine({ command: 'migrate', event: 'done', ...r }));
  else {
    out.result(`migrated process ${o.pid} in ${r.iterations} iterations (${r.stoppedBecause}${r.convergence ? `; ${r.convergence}` : ''})\n`
      + `  sent ${formatBytes(r.bytesSent)} in ${formatUs(r.totalMs * 1000)}, downtime ${formatUs(r.downtimeMs * 1000)}\n`
      + `  receiver image: ${r.receiverDir}${r.restoredPid ? `, running as pid ${r.restoredPid}` : ''}\n`
      + (r.postcopy ? `  post-copy (${r.postcopy.because}): ${r.postcopy.pages} pages served after the resume (${r.postcopy.pagesRequested} on demand), all in ${formatUs(r.postcopy.allInMs * 1000)} after the freeze\n` : ''));
  }
  if (r.restoreError) {
    process.stderr.write(`tsnap: ${r.restoreError}\n`);
    process.exitCode = ExitCode.restoreFailed;
  }
}

/** Seconds, 0 included (no limit). */
function peerSeconds(v: string): number {
  if (!/^\d+(\.\d+)?$/.test(v) || Number(v) > 86_400) throw new TsnapError('usage', `--peer-timeout: expected a number of seconds up to 86400 (0: no limit), got "${v}"`);
  return Number(v);
}

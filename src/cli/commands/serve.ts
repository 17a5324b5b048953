/** `tsnap serve`: receive migrations, and restore them with --restore. */
import type { Command } from 'commander';
import type { CliContext } from '../context.js';
import { addTokenOptions, intOption, jsonOption, parseHostPort, parseSeconds } from '../options.js';
import { readToken } from '../token.js';

interface ServeFlags {
  listen: string; dir: string; restore?: boolean; newPid?: boolean; liveBuild: boolean; warmUp: boolean; token?: string; tokenFile?: string;
  tlsCert?: string; tlsKey?: string; count?: number; handshakeTimeout: number; idleTimeout: number; stdout?: string; stderr?: string; json?: boolean;
}

export function registerServe(program: Command, ctx: CliContext): void {
  const cmd = program.command('serve')
    .description('receive migrations: write them as image chains, and restore them with --restore')
    .option('-l, --listen <host:port>', 'address to listen on (loopback by default)', '127.0.0.1:7707')
    .requiredOption('-d, --dir <dir>', 'where incoming images go (DIR/<pid>-<time>/1, 2, ..., final)')
    .option('--restore', 'restore each migrated process as soon as its image is complete')
    .option('--new-pid', 'with --restore: give restored processes fresh pids (the process is then built while it arrives even when its pid is taken here)')
    .option('--no-live-build', 'with --restore: restore from the image chain after the commit instead of building the process while it arrives')
    .option('--no-warm-up', 'with --restore: do not restore a throwaway process (sleep) before listening; the first migration then restores with cold code, ~2x slower after the commit');
  addTokenOptions(cmd, 'shared secret the sender must present')
    .option('--tls-cert <file>', 'TLS certificate (PEM); with --tls-key, accept TLS only')
    .option('--tls-key <file>', 'TLS private key (PEM)')
    .option('--count <n>', 'exit after N migrations', intOption('--count', 1))
    .option('--handshake-timeout <seconds>', 'close a connection that has not presented its HELLO (and TLS handshake) within this time', parseSeconds, 10)
    .option('--idle-timeout <seconds>', 'abandon a migration whose sender has sent nothing for this long before its commit (a dead peer that never closed)', parseSeconds, 300)
    .option('--stdout <file>', 'stdout of restored processes (default: this one\'s)')
    .option('--stderr <file>', 'stderr of restored processes (default: this one\'s)')
    .addOption(jsonOption('one JSON event per line'))
    .addHelpText('after', '\nExample:\n  tsnap serve --listen 0.0.0.0:7707 --dir /var/lib/tsnap/in --restore --token-file /etc/tsnap/token')
    .action((o: ServeFlags) => runServe(o, ctx));
}

async function runServe(o: ServeFlags, ctx: CliContext): Promise<void> {
  const { host, port } = parseHostPort(o.listen, '127.0.0.1');
  const onEvent = (e: Record<string, unknown>) => process.stderr.write(o.json ? `${JSON.stringify(e)}\n` : `tsnap serve: ${Object.entries(e).map(([k, v]) => `${k}=${v}`).join(' ')}\n`);
  const token = readToken(o, o.json ? (message) => onEvent({ event: 'warning', message }) : ctx.warn);
  const { serve } = await import('../../migrate/receiver.js');
  const s = await serve({
    host, port, dir: o.dir, token, restore: !!o.restore, newPid: !!o.newPid, liveBuild: o.liveBuild, warmUp: o.warmUp, count: o.count, handshakeTimeoutMs: o.handshakeTimeout * 1000, idleTimeoutMs: o.idleTimeout * 1000,
    tls: o.tlsCert && o.tlsKey ? { cert: o.tlsCert, key: o.tlsKey } : undefined, stdout: o.stdout, stderr: o.stderr,
    onEvent,
  });
  await s.done;
}

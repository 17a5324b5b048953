/** The command line: parses, calls the library, prints. No logic of its own. */
import { Command, Option, CommanderError } from 'commander';
import { dump, preDump, type DumpResult } from '../dump/dump.js';
import { dumpTree, type TreeDumpResult } from '../dump/tree.js';
import { untrack, untrackPid } from '../track/untrack.js';
import { dumpIteratively } from '../dump/iterative.js';
import { squash } from '../image/squash.js';
import { serve } from '../migrate/receiver.js';
import { migrate } from '../migrate/sender.js';
import { readFileSync } from 'node:fs';

function parseHostPort(v: string, defaultHost: string): { host: string; port: number } {
  const m = /^(?:\[?([^\]]*)\]?:)?(\d+)$/.exec(v) ?? /^([^:]+)$/.exec(v);
  if (!m) throw new TsnapError('usage', `expected HOST:PORT, got "${v}"`);
  if (m.length === 2) return { host: m[1], port: 7707 };
  return { host: m[1] || defaultHost, port: Number(m[2]) };
}

function readToken(o: { token?: string; tokenFile?: string }): string {
  const t = o.tokenFile ? readFileSync(o.tokenFile, 'utf8').trim() : o.token ?? process.env.TSNAP_TOKEN;
  if (!t) throw new TsnapError('usage', 'a shared secret is required: --token, --token-file or TSNAP_TOKEN (the receiver runs what it is sent)');
  return t;
}

function parseRate(v: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?B)?(?:\/s)?$/.exec(v);
  if (!m) throw new TsnapError('usage', `bad rate "${v}" (e.g. 50M, 1G)`);
  const mult = { '': 1, k: 1e3, m: 1e6, g: 1e9 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * mult;
}
import { restore, waitForExit } from '../restore/restore.js';
import { kill } from '../sys/index.js';
import { TsnapError, ExitCode } from '../errors.js';
import { TOOL_VERSION } from '../version.js';
import { showImage } from './show.js';
import { formatBytes, formatUs } from './format.js';

function parsePid(v: string): number {
  if (!/^\d+$/.test(v)) throw new TsnapError('usage', `--pid must be a number, got "${v}"`);
  return Number(v);
}

export async function main(argv: string[]): Promise<void> {
  const program = new Command();
  program
    .name('tsnap')
    .description('Checkpoint and restore Linux processes, incrementally.')
    .version(TOOL_VERSION)
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  const warn = (m: string) => process.stderr.write(`tsnap: warning: ${m}\n`);
  const report = (r: DumpResult, what: string, pid: number, json?: boolean) => {
    if (json) {
      process.stdout.write(JSON.stringify({ dir: r.dir, imageId: r.imageId, kind: r.kind, killed: r.killed, trackingLost: r.trackingLost, stats: r.stats }) + '\n');
      return;
    }
    const s = r.stats;
    process.stdout.write(
      `${what} process ${pid} to ${r.dir} (${r.kind}${what === 'dumped' ? `, ${r.killed ? 'killed' : 'left running'}` : ', still running, tracked'})\n`
      + `  pages: ${s.pagesWritten} written of ${s.pagesScanned} mapped${s.pagesZero ? `, ${s.pagesZero} dropped` : ''}, ${formatBytes(s.bytesRaw)} -> ${formatBytes(s.bytesStored)} stored\n`
      + `  frozen ${formatUs(s.frozenUs)} (freeze ${formatUs(s.freezeUs)}, memory ${formatUs(s.memdumpUs)}, ${s.throughputMiBps.toFixed(0)} MiB/s)\n`,
    );
  };

  const reportTree = (t: TreeDumpResult, what: string, json?: boolean) => {
    if (json) {
      process.stdout.write(JSON.stringify({
        dir: t.dir, root: t.root, killed: t.killed, frozenUs: t.frozenUs,
        processes: t.processes.map((p) => ({ pid: p.pid, dir: p.result.dir, kind: p.result.kind, trackingLost: p.result.trackingLost, stats: p.result.stats })),
      }) + '\n');
      return;
    }
    const bytes = t.processes.reduce((n, p) => n + p.result.stats.bytesStored, 0);
    process.stdout.write(`${what} the tree of process ${t.root} (${t.processes.length} processes) to ${t.dir}${what === 'dumped' ? ` (${t.killed ? 'killed' : 'left running'})` : ''}\n`
      + t.processes.map((p) => `  ${p.pid}: ${p.result.kind}, ${formatBytes(p.result.stats.bytesStored)} stored\n`).join('')
      + `  ${formatBytes(bytes)} in all${what === 'dumped' ? `, frozen ${formatUs(t.frozenUs)}` : ''}\n`);
  };

  program.command('dump')
    .description('freeze a process and write its complete state to an image directory')
    .requiredOption('-p, --pid <pid>', 'process to dump', parsePid)
    .requiredOption('-d, --dir <dir>', 'image directory to create (must be new or empty)')
    .option('--parent <dir>', 'store only what changed since this pre-dump (incremental)')
    .option('-t, --tree', 'dump the process and all its descendants, frozen together (DIR/<pid> each)')
    .option('--tcp-established', 'take established TCP connections with TCP repair mode (the peer must not send while frozen)')
    .option('--pre-dumps <n>', 'pre-dump up to N times while it runs, then dump the last delta: writes DIR/1, DIR/2, ...', (v) => Number(v))
    .option('-R, --leave-running', 'resume the process after the dump instead of killing it')
    .addOption(new Option('--compress <codec>', 'page compression').choices(['lz4', 'none']).default('none'))
    .option('--no-fsync', 'do not fsync the image before killing the process')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExamples:\n  tsnap dump --pid 1234 --dir /var/tmp/img           # dump and kill\n  tsnap dump --pid 1234 --dir img --leave-running --compress lz4\n  tsnap dump --pid 1234 --dir img/3 --parent img/2    # final image of an incremental chain')
    .action(async (o: { pid: number; dir: string; parent?: string; tree?: boolean; tcpEstablished?: boolean; preDumps?: number; leaveRunning?: boolean; compress: 'lz4' | 'none'; fsync: boolean; json?: boolean }) => {
      if (o.tcpEstablished && o.preDumps !== undefined) throw new TsnapError('usage', '--tcp-established does not go with --pre-dumps yet; run pre-dump and dump --parent');
      if (o.tree) {
        if (o.preDumps !== undefined) throw new TsnapError('usage', '--pre-dumps does not go with --tree yet; run pre-dump --tree and dump --tree --parent');
        const t = await dumpTree({
          pid: o.pid, dir: o.dir, parent: o.parent, leaveRunning: !!o.leaveRunning, compression: o.compress,
          fsync: o.leaveRunning ? false : o.fsync, warn, tcpEstablished: o.tcpEstablished,
        }, 'dump');
        reportTree(t, 'dumped', o.json);
        return;
      }
      if (o.preDumps !== undefined) {
        if (o.parent) throw new TsnapError('usage', '--pre-dumps and --parent do not go together');
        const it = await dumpIteratively({
          pid: o.pid, dir: o.dir, preDumps: o.preDumps, leaveRunning: !!o.leaveRunning, compression: o.compress,
          fsync: o.leaveRunning ? false : o.fsync, warn,
        });
        if (o.json) {
          process.stdout.write(JSON.stringify({ final: it.final.dir, stoppedBecause: it.stoppedBecause, rounds: [...it.rounds, it.final].map((r) => ({ dir: r.dir, kind: r.kind, stats: r.stats })) }) + '\n');
          return;
        }
        for (const r of it.rounds) report(r, 'pre-dumped', o.pid);
        process.stdout.write(`pre-dumps ended: ${it.stoppedBecause}\n`);
        report(it.final, 'dumped', o.pid);
        process.stdout.write(`restore with: tsnap restore --dir ${it.final.dir}\n`);
        return;
      }
      const r = await dump({
        pid: o.pid, dir: o.dir, parent: o.parent, leaveRunning: !!o.leaveRunning, compression: o.compress,
        fsync: o.leaveRunning ? false : o.fsync, warn, tcpEstablished: o.tcpEstablished,
      });
      report(r, 'dumped', o.pid, o.json);
    });

  program.command('pre-dump')
    .description('copy a running process\'s memory and track its writes, for a later incremental dump')
    .requiredOption('-p, --pid <pid>', 'process to pre-dump (it keeps running)', parsePid)
    .requiredOption('-d, --dir <dir>', 'image directory to create (must be new or empty)')
    .option('--parent <dir>', 'the previous pre-dump: store only pages written since')
    .option('-t, --tree', 'pre-dump the process and all its descendants (DIR/<pid> each)')
    .addOption(new Option('--compress <codec>', 'page compression').choices(['lz4', 'none']).default('none'))
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExamples:\n  tsnap pre-dump --pid 1234 --dir img/1\n  tsnap pre-dump --pid 1234 --dir img/2 --parent img/1\n  tsnap dump     --pid 1234 --dir img/3 --parent img/2\n  tsnap restore  --dir img/3')
    .action(async (o: { pid: number; dir: string; parent?: string; tree?: boolean; compress: 'lz4' | 'none'; json?: boolean }) => {
      if (o.tree) {
        reportTree(await dumpTree({ pid: o.pid, dir: o.dir, parent: o.parent, compression: o.compress, warn }, 'predump'), 'pre-dumped', o.json);
        return;
      }
      const r = await preDump({ pid: o.pid, dir: o.dir, parent: o.parent, compression: o.compress, warn });
      report(r, 'pre-dumped', o.pid, o.json);
    });

  program.command('untrack')
    .description('stop tracking a process\'s writes: removes every registration and write-protection')
    .option('-p, --pid <pid>', 'the tracked process', parsePid)
    .option('-d, --dir <dir>', 'or: the latest pre-dump of the process')
    .action((o: { pid?: number; dir?: string }) => {
      if (o.pid === undefined && !o.dir) throw new TsnapError('usage', 'untrack needs --pid or --dir');
      process.stdout.write(`${o.pid !== undefined ? untrackPid(o.pid) : untrack(o.dir!)}\n`);
    });

  program.command('restore')
    .description('recreate a process from an image and resume it where it stopped')
    .requiredOption('-d, --dir <dir>', 'image directory')
    .option('--detach', 'return once the process runs instead of waiting for it')
    .option('--pidfile <file>', 'write the restored pid to this file')
    .option('--new-pid', 'restore under a fresh pid instead of the original one')
    .option('--stdin <file>', 'file for the process\'s stdin (default: tsnap\'s own)')
    .option('--stdout <file>', 'file for the process\'s stdout, appended (default: tsnap\'s own)')
    .option('--stderr <file>', 'file for the process\'s stderr, appended (default: tsnap\'s own)')
    .option('--json', 'print the result as JSON (on stderr when not detached: stdout belongs to the process)')
    .addHelpText('after', '\nExamples:\n  tsnap restore --dir img                  # run it in the foreground, exit with its status\n  tsnap restore --dir img --detach --pidfile app.pid\n  tsnap restore --dir img --new-pid --detach   # a second copy next to the original')
    .action(async (o: { dir: string; detach?: boolean; pidfile?: string; newPid?: boolean; stdin?: string; stdout?: string; stderr?: string; json?: boolean }) => {
      const r = await restore({
        dir: o.dir, newPid: !!o.newPid, pidfile: o.pidfile, stdin: o.stdin, stdout: o.stdout, stderr: o.stderr,
        warn: (m) => process.stderr.write(`tsnap: warning: ${m}\n`),
      });
      const report = o.json
        ? JSON.stringify({ pid: r.pid, originalPid: r.originalPid, stats: r.stats, warnings: r.warnings }) + '\n'
        : `restored process ${r.originalPid}${r.pid !== r.originalPid ? ` as pid ${r.pid} (new pid)` : ''} from ${o.dir}: ${formatBytes(r.stats.bytesRestored)} in ${formatUs(r.stats.restoreUs)}\n`;
      if (o.detach) {
        process.stdout.write(report);
        return;
      }
      // The restored process owns stdout now: report on stderr.
      process.stderr.write(report);
      const forward = (sig: NodeJS.Signals) => () => { try { kill(r.pid, sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1); } catch { /* gone */ } };
      const handlers = (['SIGINT', 'SIGTERM', 'SIGHUP'] as const).map((s) => [s, forward(s)] as const);
      for (const [s, h] of handlers) process.on(s, h);
      const exit = await waitForExit(r.pid);
      for (const [s, h] of handlers) process.off(s, h);
      process.exitCode = exit.code ?? 128 + (exit.signal ?? 0);
    });

  program.command('squash')
    .description('fold an incremental chain into one full image')
    .argument('<dir>', 'the newest image of the chain')
    .requiredOption('-o, --out <dir>', 'new image directory')
    .addOption(new Option('--compress <codec>', 'page compression of the new image').choices(['lz4', 'none']))
    .action(async (dir: string, o: { out: string; compress?: 'lz4' | 'none' }) => {
      const r = await squash(dir, o.out, o.compress);
      process.stdout.write(`squashed ${r.levels} images into ${r.dir}: ${r.pages} pages\n`);
    });

  program.command('serve')
    .description('receive migrations: write them as image chains, and restore them with --restore')
    .option('-l, --listen <host:port>', 'address to listen on (loopback by default)', '127.0.0.1:7707')
    .requiredOption('-d, --dir <dir>', 'where incoming images go (DIR/<pid>-<time>/1, 2, ..., final)')
    .option('--restore', 'restore each migrated process as soon as its image is complete')
    .option('--token <secret>', 'shared secret the sender must present')
    .option('--token-file <file>', 'read the shared secret from a file')
    .option('--tls-cert <file>', 'TLS certificate (PEM); with --tls-key, accept TLS only')
    .option('--tls-key <file>', 'TLS private key (PEM)')
    .option('--count <n>', 'exit after N migrations', (v) => Number(v))
    .option('--stdout <file>', 'stdout of restored processes (default: this one\'s)')
    .option('--stderr <file>', 'stderr of restored processes (default: this one\'s)')
    .option('--json', 'one JSON event per line')
    .addHelpText('after', '\nExample:\n  tsnap serve --listen 0.0.0.0:7707 --dir /var/lib/tsnap/in --restore --token-file /etc/tsnap/token')
    .action(async (o: { listen: string; dir: string; restore?: boolean; token?: string; tokenFile?: string; tlsCert?: string; tlsKey?: string; count?: number; stdout?: string; stderr?: string; json?: boolean }) => {
      const { host, port } = parseHostPort(o.listen, '127.0.0.1');
      const s = await serve({
        host, port, dir: o.dir, token: readToken(o), restore: !!o.restore, count: o.count,
        tls: o.tlsCert && o.tlsKey ? { cert: o.tlsCert, key: o.tlsKey } : undefined, stdout: o.stdout, stderr: o.stderr,
        onEvent: (e) => process.stderr.write(o.json ? `${JSON.stringify(e)}\n` : `tsnap serve: ${Object.entries(e).map(([k, v]) => `${k}=${v}`).join(' ')}\n`),
      });
      await s.done;
    });

  program.command('migrate')
    .description('move a running process to a tsnap serve, with a downtime of the last small delta')
    .requiredOption('-p, --pid <pid>', 'process to migrate', parsePid)
    .requiredOption('--to <host:port>', 'the receiving tsnap serve')
    .option('--token <secret>', 'shared secret of the receiver')
    .option('--token-file <file>', 'read the shared secret from a file')
    .option('--downtime-ms <ms>', 'freeze once the last round fits this budget', (v) => Number(v), 50)
    .option('--max-iterations <n>', 'at most N pre-copy rounds', (v) => Number(v), 10)
    .option('--bandwidth-limit <rate>', 'cap the sending rate (e.g. 100M bytes/s)', parseRate)
    .option('-R, --leave-running', 'keep the source running after the receiver has the image')
    .option('-t, --tree', 'migrate the process and all its descendants')
    .addOption(new Option('--compress <codec>', 'page compression').choices(['lz4', 'none']).default('none'))
    .option('--tls', 'connect with TLS')
    .option('--tls-ca <file>', 'CA certificate to verify the receiver with')
    .option('--tls-insecure', 'do not verify the receiver\'s certificate')
    .option('--json', 'one JSON event per line, then the report')
    .addHelpText('after', '\nExample:\n  tsnap migrate --pid 1234 --to 10.0.0.2:7707 --token-file /etc/tsnap/token --downtime-ms 50')
    .action(async (o: { pid: number; to: string; token?: string; tokenFile?: string; downtimeMs: number; maxIterations: number; bandwidthLimit?: number; leaveRunning?: boolean; tree?: boolean; compress: 'lz4' | 'none'; tls?: boolean; tlsCa?: string; tlsInsecure?: boolean; json?: boolean }) => {
      const { host, port } = parseHostPort(o.to, '127.0.0.1');
      const r = await migrate({
        pid: o.pid, host, port, token: readToken(o), downtimeMs: o.downtimeMs, maxIterations: o.maxIterations,
        bandwidthLimit: o.bandwidthLimit, leaveRunning: !!o.leaveRunning, compression: o.compress, tree: !!o.tree,
        tls: o.tls || o.tlsCa || o.tlsInsecure ? { ca: o.tlsCa, insecure: !!o.tlsInsecure } : undefined,
        warn,
        onEvent: (e) => process.stderr.write(o.json ? `${JSON.stringify(e)}\n` : `tsnap migrate: ${Object.entries(e).map(([k, v]) => `${k}=${v}`).join(' ')}\n`),
      });
      if (o.json) { process.stdout.write(`${JSON.stringify({ event: 'done', ...r })}\n`); }
      else {
        process.stdout.write(`migrated process ${o.pid} in ${r.iterations} iterations (${r.stoppedBecause})\n`
          + `  sent ${formatBytes(r.bytesSent)} in ${formatUs(r.totalMs * 1000)}, downtime ${formatUs(r.downtimeMs * 1000)}\n`
          + `  receiver image: ${r.receiverDir}${r.restoredPid ? `, running as pid ${r.restoredPid}` : ''}\n`);
      }
      if (r.restoreError) {
        process.stderr.write(`tsnap: ${r.restoreError}\n`);
        process.exitCode = ExitCode.restoreFailed;
      }
    });

  program.command('show')
    .description('describe an image: process, registers, memory, files, pages')
    .argument('<dir>', 'image directory')
    .option('--json', 'print the full decoded metadata as JSON')
    .action((dir: string, o: { json?: boolean }) => {
      process.stdout.write(showImage(dir, !!o.json));
    });

  // Should a bug leave tsnap waiting on nothing, Node would exit with 0 as if
  // all went well: report it instead.
  let settled = false;
  process.once('beforeExit', () => {
    if (!settled) {
      process.stderr.write('tsnap: internal error: the operation stopped without finishing\n');
      process.exitCode = ExitCode.internal;
    }
  });
  try {
    await program.parseAsync(argv);
  } catch (err) {
    process.exitCode = reportError(err);
  } finally {
    settled = true;
  }
}

function reportError(err: unknown): number {
  if (err instanceof CommanderError) {
    if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
    return ExitCode.usage;
  }
  if (err instanceof TsnapError) {
    process.stderr.write(`tsnap: ${err.message}\n`);
    if (process.env.TSNAP_DEBUG && err.cause) process.stderr.write(`${(err.cause as Error).stack ?? err.cause}\n`);
    return err.exitCode;
  }
  process.stderr.write(`tsnap: internal error: ${(err as Error)?.stack ?? err}\n`);
  return ExitCode.internal;
}

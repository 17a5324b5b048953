/** The command line: parses, calls the library, prints. No logic of its own. */
import { Command, Option, CommanderError } from 'commander';
import { dump, preDump, type DumpResult } from '../dump/dump.js';
import { dumpTree, type TreeDumpResult } from '../dump/tree.js';
import { untrack, untrackPid } from '../track/untrack.js';
import { dumpIteratively, dumpTreeIteratively } from '../dump/iterative.js';
import { squash } from '../image/squash.js';
import { serve } from '../migrate/receiver.js';
import { migrate } from '../migrate/sender.js';
import { readToken } from './token.js';

function parseHostPort(v: string, defaultHost: string): { host: string; port: number } {
  const m = /^(?:\[?([^\]]*)\]?:)?(\d+)$/.exec(v) ?? /^([^:]+)$/.exec(v);
  if (!m) throw new TsnapError('usage', `expected HOST:PORT, got "${v}"`);
  if (m.length === 2) return { host: m[1], port: 7707 };
  const port = Number(m[2]);
  // 0: any free port (serve --listen HOST:0).
  if (port > 65535) throw new TsnapError('usage', `port must be from 0 to 65535, got ${m[2]}`);
  return { host: m[1] || defaultHost, port };
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
import { formatBytes, formatUs } from '../format.js';
import { Output } from './output.js';
import { check } from '../check/check.js';
import { formatCheck } from './check-table.js';
import { verify } from '../image/verify.js';
import { runDemo } from '../demo/demo.js';
import { completionScript } from './completion.js';

/** A size in bytes, with an optional binary suffix (K, M, G: KiB, MiB, GiB), as CRIU's --ghost-limit. */
function parseSize(v: string): number {
  const m = /^(\d+)\s*([kKmMgG]?)(?:i?B)?$/.exec(v);
  if (!m) throw new TsnapError('usage', `bad size "${v}" (e.g. 64M, 1G, 4096)`);
  return Number(m[1]) * { '': 1, k: 1024, m: 1 << 20, g: 1 << 30 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
}

function parseSeconds(v: string): number {
  const n = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || !(n > 0)) throw new TsnapError('usage', `expected a number of seconds above 0, got "${v}"`);
  return n;
}

/** An integer option within [min, max]; commander passes the raw text. */
function intOption(name: string, min: number, max = Number.MAX_SAFE_INTEGER): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < min || n > max) throw new TsnapError('usage', `${name} must be a whole number ${max === Number.MAX_SAFE_INTEGER ? `of at least ${min}` : `from ${min} to ${max}`}, got "${v}"`);
    return n;
  };
}

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
    .configureOutput({ writeErr: (s) => process.stderr.write(s) })
    .option('-q, --quiet', 'print results and errors only: no progress line, no warnings')
    .option('-v, --verbose', 'also print each step as it happens')
    .option('--log-file <file>', 'append a timestamped record of steps, warnings, results and errors to FILE')
    .addHelpText('after', '\nStart with:\n  tsnap check          # what this machine supports\n  npm run demo         # dump, pre-dump and restore a sample process, step by step\n\nEach command has examples: tsnap help <command>.');

  let output: Output | null = null;
  /** The command's output settings: the global options, plus its own --json. */
  const out = (json?: boolean): Output => (output = new Output({ ...program.opts(), json }));
  const warn = (m: string) => (output ?? out()).warn(m);
  const progress = (label: string) => (p: { bytes: number; total: number; pid: number }) => (output ?? out()).progress(`${label} ${p.pid}`, p.bytes, p.total);
  const report = (r: DumpResult, what: string, pid: number, json?: boolean) => {
    if (json) {
      (output ?? out()).result(JSON.stringify({ command: what === 'dumped' ? 'dump' : 'pre-dump', pid, dir: r.dir, imageId: r.imageId, kind: r.kind, killed: r.killed, trackingLost: r.trackingLost, stats: r.stats }) + '\n');
      return;
    }
    const s = r.stats;
    (output ?? out()).result(
      `${what} process ${pid} to ${r.dir} (${r.kind}${what === 'dumped' ? `, ${r.killed ? 'killed' : 'left running'}` : ', still running, tracked'})\n`
      + `  pages: ${s.pagesWritten} written of ${s.pagesScanned} mapped${s.pagesZero ? `, ${s.pagesZero} dropped` : ''}, ${formatBytes(s.bytesRaw)} -> ${formatBytes(s.bytesStored)} stored\n`
      + `  frozen ${formatUs(s.frozenUs)} (freeze ${formatUs(s.freezeUs)}, memory ${formatUs(s.memdumpUs)}, ${s.throughputMiBps.toFixed(0)} MiB/s)\n`,
    );
  };

  const reportTree = (t: TreeDumpResult, what: string, json?: boolean) => {
    if (json) {
      (output ?? out()).result(JSON.stringify({
        command: what === 'dumped' ? 'dump' : 'pre-dump', tree: true,
        dir: t.dir, root: t.root, killed: t.killed, frozenUs: t.frozenUs,
        processes: t.processes.map((p) => ({ pid: p.pid, dir: p.result.dir, kind: p.result.kind, trackingLost: p.result.trackingLost, stats: p.result.stats })),
      }) + '\n');
      return;
    }
    const bytes = t.processes.reduce((n, p) => n + p.result.stats.bytesStored, 0);
    (output ?? out()).result(`${what} the tree of process ${t.root} (${t.processes.length} processes) to ${t.dir}${what === 'dumped' ? ` (${t.killed ? 'killed' : 'left running'})` : ''}\n`
      + t.processes.map((p) => `  ${p.pid}: ${p.result.kind}, ${formatBytes(p.result.stats.bytesStored)} stored\n`).join('')
      + `  ${formatBytes(bytes)} in all${what === 'dumped' ? `, frozen ${formatUs(t.frozenUs)}` : ''}\n`);
  };

  program.command('dump')
    .description('freeze a process and write its complete state to an image directory')
    .requiredOption('-p, --pid <pid>', 'process to dump', parsePid)
    .requiredOption('-d, --dir <dir>', 'image directory to create (must be new or empty)')
    .option('--parent <dir>', 'store only what changed since this pre-dump (incremental)')
    .option('-t, --tree', 'dump the process and all its descendants, frozen together (DIR/<pid> each)')
    .option('--tcp-established', 'take established and half-closed TCP connections with TCP repair mode (locked with iptables rules until restored)')
    .option('--tcp-close', 'take connected TCP sockets as closed ones: they come back shut down, as after a reset')
    .option('--ghost-limit <size>', 'store deleted files that hold up to SIZE bytes of data (holes do not count; default 64M)', parseSize)
    .option('--ext-unix-sk', 'a unix datagram socket connected to a named socket outside the dump (e.g. /dev/log) connects to that name again at restore')
    .option('--pre-dumps <n>', 'pre-dump up to N times while it runs, then dump the last delta: writes DIR/1, DIR/2, ...', intOption('--pre-dumps', 1, 1000))
    .option('-R, --leave-running', 'resume the process after the dump instead of killing it')
    .addOption(new Option('--compress <codec>', 'page compression').choices(['lz4', 'none']).default('none'))
    .option('--no-fsync', 'do not fsync the image before killing the process')
    .option('--cow', 'copy-on-write: freeze only to take the state, copy the memory while the process runs (killed after the copy unless --leave-running; the default with --leave-running for processes of 32 MiB or more)')
    .option('--no-cow', 'keep the process frozen for the whole memory copy')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExamples:\n  tsnap dump --pid 1234 --dir /var/tmp/img           # dump and kill\n  tsnap dump --pid 1234 --dir img --leave-running --compress lz4\n  tsnap dump --pid 1234 --dir img/3 --parent img/2    # final image of an incremental chain')
    .action(async (o: { pid: number; dir: string; parent?: string; tree?: boolean; tcpEstablished?: boolean; tcpClose?: boolean; extUnixSk?: boolean; ghostLimit?: number; preDumps?: number; leaveRunning?: boolean; compress: 'lz4' | 'none'; fsync: boolean; cow?: boolean; json?: boolean }) => {
      out(o.json);
      if (o.tcpEstablished && o.preDumps !== undefined) throw new TsnapError('usage', '--tcp-established does not go with --pre-dumps yet; run pre-dump and dump --parent');
      if (o.cow && (o.tree || o.preDumps !== undefined)) warn('--cow applies to single-process dumps for now; this one copies memory frozen');
      const common = {
        pid: o.pid, dir: o.dir, parent: o.parent, leaveRunning: !!o.leaveRunning, compression: o.compress,
        fsync: o.leaveRunning ? false : o.fsync, warn, tcpEstablished: o.tcpEstablished, tcpClose: o.tcpClose, extUnixSk: o.extUnixSk, ghostLimit: o.ghostLimit, onProgress: progress('copying the memory of'),
      };
      if (o.tree && o.preDumps !== undefined) {
        if (o.parent) throw new TsnapError('usage', '--pre-dumps and --parent do not go together');
        const it = await dumpTreeIteratively({ ...common, preDumps: o.preDumps });
        if (o.json) {
          output!.result(JSON.stringify({ command: 'dump', tree: true, final: it.final.dir, stoppedBecause: it.stoppedBecause, rounds: [...it.rounds, it.final].map((t) => ({ dir: t.dir, processes: t.processes.map((p) => ({ pid: p.pid, kind: p.result.kind, stats: p.result.stats })) })) }) + '\n');
          return;
        }
        for (const t of it.rounds) reportTree(t, 'pre-dumped');
        output!.result(`pre-dumps ended: ${it.stoppedBecause}\n`);
        reportTree(it.final, 'dumped');
        output!.result(`restore with: tsnap restore --dir ${it.final.dir}\n`);
        return;
      }
      if (o.tree) {
        reportTree(await dumpTree(common, 'dump'), 'dumped', o.json);
        return;
      }
      if (o.preDumps !== undefined) {
        if (o.parent) throw new TsnapError('usage', '--pre-dumps and --parent do not go together');
        const it = await dumpIteratively({ ...common, preDumps: o.preDumps });
        if (o.json) {
          output!.result(JSON.stringify({ command: 'dump', final: it.final.dir, stoppedBecause: it.stoppedBecause, rounds: [...it.rounds, it.final].map((r) => ({ dir: r.dir, kind: r.kind, stats: r.stats })) }) + '\n');
          return;
        }
        for (const r of it.rounds) report(r, 'pre-dumped', o.pid);
        output!.result(`pre-dumps ended: ${it.stoppedBecause}\n`);
        report(it.final, 'dumped', o.pid);
        output!.result(`restore with: tsnap restore --dir ${it.final.dir}\n`);
        return;
      }
      // Copy-on-write is the default of --leave-running without --parent, for processes big enough to gain from it (kill mode and final rounds ask for it with --cow).
      report(await dump({ ...common, cow: o.cow ?? (o.leaveRunning && !o.parent ? 'auto' : false) }), 'dumped', o.pid, o.json);
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
      out(o.json);
      if (o.tree) {
        reportTree(await dumpTree({ pid: o.pid, dir: o.dir, parent: o.parent, compression: o.compress, warn, onProgress: progress('copying the memory of') }, 'predump'), 'pre-dumped', o.json);
        return;
      }
      const r = await preDump({ pid: o.pid, dir: o.dir, parent: o.parent, compression: o.compress, warn, onProgress: progress('copying the memory of') });
      report(r, 'pre-dumped', o.pid, o.json);
    });

  program.command('untrack')
    .description('stop tracking a process\'s writes: removes every registration and write-protection')
    .option('-p, --pid <pid>', 'the tracked process', parsePid)
    .option('-d, --dir <dir>', 'or: the latest pre-dump of the process')
    .addHelpText('after', '\nExamples:\n  tsnap untrack --pid 1234          # give up incremental dumps of 1234\n  tsnap untrack --dir img/2         # the tracking a pre-dump left behind')
    .action((o: { pid?: number; dir?: string }) => {
      if (o.pid === undefined && !o.dir) throw new TsnapError('usage', 'untrack needs --pid or --dir');
      out().result(`${o.pid !== undefined ? untrackPid(o.pid) : untrack(o.dir!)}\n`);
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
    .option('--check <mode>', 'compare the rebuilt process with its image before it runs: warn (default) names each difference, strict refuses to start it, off skips', 'warn')
    .option('--tcp-close', 'bring TCP connections of the image back closed (as after a reset) instead of repaired')
    .option('--lazy', 'start the process before its memory is in: pages fault in from the image, a background pager fills the rest')
    .option('--lazy-log <file>', 'with --lazy: where the pager reports (default: stderr)')
    .addHelpText('after', '\nExamples:\n  tsnap restore --dir img                  # run it in the foreground, exit with its status\n  tsnap restore --dir img --detach --pidfile app.pid\n  tsnap restore --dir img --new-pid --detach   # a second copy next to the original')
    .action(async (o: { dir: string; detach?: boolean; pidfile?: string; newPid?: boolean; stdin?: string; stdout?: string; stderr?: string; json?: boolean; check: string; tcpClose?: boolean; lazy?: boolean; lazyLog?: string }) => {
      const o2 = out(o.json);
      if (o.check !== 'warn' && o.check !== 'strict' && o.check !== 'off') throw new TsnapError('usage', `--check must be warn, strict or off, not "${o.check}"`);
      const r = await restore({
        dir: o.dir, newPid: !!o.newPid, pidfile: o.pidfile, stdin: o.stdin, stdout: o.stdout, stderr: o.stderr, check: o.check, tcpClose: !!o.tcpClose,
        warn, onProgress: progress('writing the memory of'),
        lazy: o.lazy ? { detach: !!o.detach, log: o.lazyLog } : undefined,
      });
      o2.clear();
      const report = o.json
        ? JSON.stringify({ command: 'restore', pid: r.pid, originalPid: r.originalPid, pids: r.pids, stats: r.stats, warnings: r.warnings }) + '\n'
        : `restored process ${r.originalPid}${r.pid !== r.originalPid ? ` as pid ${r.pid} (new pid)` : ''} from ${o.dir}: ${formatBytes(r.stats.bytesRestored)} in ${formatUs(r.stats.restoreUs)}\n`;
      if (o.detach) {
        o2.result(report);
        // The process runs already; tsnap exits once a background pager took its memory over.
        if (r.lazy) {
          const how = await r.lazy.handover();
          if (/^(pager process|lazy fill done)/.test(how)) process.stderr.write(`tsnap: ${how}\n`);
          else warn(how);
        }
        return;
      }
      // The restored process owns stdout now: report on stderr.
      process.stderr.write(report);
      const forward = (sig: NodeJS.Signals) => () => { try { kill(r.pid, sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1); } catch { /* gone */ } };
      const handlers = (['SIGINT', 'SIGTERM', 'SIGHUP'] as const).map((s) => [s, forward(s)] as const);
      for (const [s, h] of handlers) process.on(s, h);
      const exit = await waitForExit(r.pid);
      for (const [s, h] of handlers) process.off(s, h);
      await r.lazy?.finish();
      process.exitCode = exit.code ?? 128 + (exit.signal ?? 0);
    });

  program.command('squash')
    .description('fold an incremental chain into one full image')
    .argument('<dir>', 'the newest image of the chain')
    .requiredOption('-o, --out <dir>', 'new image directory')
    .addOption(new Option('--compress <codec>', 'page compression of the new image').choices(['lz4', 'none']))
    .addHelpText('after', '\nExample:\n  tsnap squash img/3 --out img-full   # one full image, restorable without img/1 and img/2')
    .action(async (dir: string, o: { out: string; compress?: 'lz4' | 'none' }) => {
      const r = await squash(dir, o.out, o.compress);
      out().result(`squashed ${r.levels} images into ${r.dir}: ${r.pages} pages\n`);
    });

  program.command('serve')
    .description('receive migrations: write them as image chains, and restore them with --restore')
    .option('-l, --listen <host:port>', 'address to listen on (loopback by default)', '127.0.0.1:7707')
    .requiredOption('-d, --dir <dir>', 'where incoming images go (DIR/<pid>-<time>/1, 2, ..., final)')
    .option('--restore', 'restore each migrated process as soon as its image is complete')
    .option('--new-pid', 'with --restore: give restored processes fresh pids (the process is then built while it arrives even when its pid is taken here)')
    .option('--no-live-build', 'with --restore: restore from the image chain after the commit instead of building the process while it arrives')
    .option('--token <secret>', 'shared secret the sender must present')
    .option('--token-file <file>', 'read the shared secret from a file')
    .option('--tls-cert <file>', 'TLS certificate (PEM); with --tls-key, accept TLS only')
    .option('--tls-key <file>', 'TLS private key (PEM)')
    .option('--count <n>', 'exit after N migrations', intOption('--count', 1))
    .option('--handshake-timeout <seconds>', 'close a connection that has not presented its HELLO (and TLS handshake) within this time', parseSeconds, 10)
    .option('--stdout <file>', 'stdout of restored processes (default: this one\'s)')
    .option('--stderr <file>', 'stderr of restored processes (default: this one\'s)')
    .option('--json', 'one JSON event per line')
    .addHelpText('after', '\nExample:\n  tsnap serve --listen 0.0.0.0:7707 --dir /var/lib/tsnap/in --restore --token-file /etc/tsnap/token')
    .action(async (o: { listen: string; dir: string; restore?: boolean; newPid?: boolean; liveBuild: boolean; token?: string; tokenFile?: string; tlsCert?: string; tlsKey?: string; count?: number; handshakeTimeout: number; stdout?: string; stderr?: string; json?: boolean }) => {
      const { host, port } = parseHostPort(o.listen, '127.0.0.1');
      const onEvent = (e: Record<string, unknown>) => process.stderr.write(o.json ? `${JSON.stringify(e)}\n` : `tsnap serve: ${Object.entries(e).map(([k, v]) => `${k}=${v}`).join(' ')}\n`);
      const token = readToken(o, o.json ? (message) => onEvent({ event: 'warning', message }) : warn);
      const s = await serve({
        host, port, dir: o.dir, token, restore: !!o.restore, newPid: !!o.newPid, liveBuild: o.liveBuild, count: o.count, handshakeTimeoutMs: o.handshakeTimeout * 1000,
        tls: o.tlsCert && o.tlsKey ? { cert: o.tlsCert, key: o.tlsKey } : undefined, stdout: o.stdout, stderr: o.stderr,
        onEvent,
      });
      await s.done;
    });

  program.command('migrate')
    .description('move a running process to a tsnap serve, with a downtime of the last small delta')
    .requiredOption('-p, --pid <pid>', 'process to migrate', parsePid)
    .requiredOption('--to <host:port>', 'the receiving tsnap serve')
    .option('--token <secret>', 'shared secret of the receiver')
    .option('--token-file <file>', 'read the shared secret from a file')
    .option('--downtime-ms <ms>', 'freeze once the last round fits this budget', intOption('--downtime-ms', 1, 3_600_000), 50)
    .option('--max-iterations <n>', 'at most N pre-copy rounds (0: none, with --postcopy)', intOption('--max-iterations', 0, 1000), 10)
    .option('--bandwidth-limit <rate>', 'cap the sending rate (e.g. 100M bytes/s)', parseRate)
    .option('-R, --leave-running', 'keep the source running after the receiver has the image')
    .option('-t, --tree', 'migrate the process and all its descendants')
    .option('--tcp-established', 'take established TCP connections along (TCP repair mode; the peer must reach the receiver at the same address)')
    .addOption(new Option('--postcopy [when]', 'resume on the receiver right after the state; the last round\'s pages follow on demand ("auto": only when pre-copy does not converge). Risk: a connection lost before every page is in loses the process').choices(['on', 'auto']))
    .addOption(new Option('--compress <codec>', 'page compression').choices(['lz4', 'none']).default('none'))
    .option('--tls', 'connect with TLS')
    .option('--tls-ca <file>', 'CA certificate to verify the receiver with')
    .option('--tls-insecure', 'do not verify the receiver\'s certificate')
    .option('--json', 'one JSON event per line, then the report')
    .addHelpText('after', '\nExample:\n  tsnap migrate --pid 1234 --to 10.0.0.2:7707 --token-file /etc/tsnap/token --downtime-ms 50')
    .action(async (o: { pid: number; to: string; token?: string; tokenFile?: string; downtimeMs: number; maxIterations: number; bandwidthLimit?: number; leaveRunning?: boolean; tree?: boolean; tcpEstablished?: boolean; compress: 'lz4' | 'none'; tls?: boolean; tlsCa?: string; tlsInsecure?: boolean; json?: boolean; postcopy?: true | 'on' | 'auto' }) => {
      const { host, port } = parseHostPort(o.to, '127.0.0.1');
      const mo = out(o.json);
      const token = readToken(o, o.json ? (message) => process.stderr.write(`${JSON.stringify({ event: 'warning', message })}\n`) : warn);
      const r = await migrate({
        pid: o.pid, host, port, token, downtimeMs: o.downtimeMs, maxIterations: o.maxIterations,
        bandwidthLimit: o.bandwidthLimit, leaveRunning: !!o.leaveRunning, compression: o.compress, tree: !!o.tree, tcpEstablished: !!o.tcpEstablished,
        ...(o.postcopy ? { postcopy: o.postcopy === 'auto' ? 'auto' as const : 'on' as const } : {}),
        tls: o.tls || o.tlsCa || o.tlsInsecure ? { ca: o.tlsCa, insecure: !!o.tlsInsecure } : undefined,
        warn, onProgress: progress('sending the memory of'),
        onEvent: (e) => (o.json ? process.stderr.write(`${JSON.stringify(e)}\n`) : mo.step(`migrate: ${Object.entries(e).map(([k, v]) => `${k}=${v}`).join(' ')}`)),
      });
      if (o.json) { mo.result(`${JSON.stringify({ command: 'migrate', event: 'done', ...r })}\n`); }
      else {
        mo.result(`migrated process ${o.pid} in ${r.iterations} iterations (${r.stoppedBecause})\n`
          + `  sent ${formatBytes(r.bytesSent)} in ${formatUs(r.totalMs * 1000)}, downtime ${formatUs(r.downtimeMs * 1000)}\n`
          + `  receiver image: ${r.receiverDir}${r.restoredPid ? `, running as pid ${r.restoredPid}` : ''}\n`
          + (r.postcopy ? `  post-copy (${r.postcopy.because}): ${r.postcopy.pages} pages served after the resume (${r.postcopy.pagesRequested} on demand), all in ${formatUs(r.postcopy.allInMs * 1000)} after the freeze\n` : ''));
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
    .addHelpText('after', '\nExamples:\n  tsnap show img/3                   # process, threads, memory map, files, chain sizes\n  tsnap show img/3 --json | jq .process.fds')
    .action((dir: string, o: { json?: boolean }) => {
      out(o.json).result(showImage(dir, !!o.json));
    });

  program.command('check')
    .description('test the kernel features and privileges tsnap needs on this machine')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExamples:\n  tsnap check\n  tsnap check --json | jq \'.items[] | select(.ok | not)\'\n\nExit status: 0 when everything required works, 9 otherwise.')
    .action(async (o: { json?: boolean }) => {
      const o2 = out(o.json);
      const r = await check();
      if (o.json) o2.result(`${JSON.stringify({ command: 'check', ...r })}\n`);
      else o2.result(formatCheck(r));
      if (!r.ok) process.exitCode = ExitCode.kernel;
    });

  program.command('verify')
    .description('check every checksum of an image chain (or tree), and that every parent is there and matches')
    .argument('<dir>', 'the newest image of the chain, or a tree image')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExamples:\n  tsnap verify img/3            # the image and all its parents\n  tsnap verify backup && tsnap restore --dir backup\n\nExit status: 0 when intact, 7 (bad image) otherwise, naming the damaged file.')
    .action((dir: string, o: { json?: boolean }) => {
      const o2 = out(o.json);
      const r = verify(dir);
      if (o.json) { o2.result(`${JSON.stringify({ command: 'verify', ok: true, ...r })}\n`); return; }
      const images = r.processes.reduce((n, p) => n + p.chain.length, 0);
      const bytes = r.processes.reduce((n, p) => n + p.chain.reduce((m, c) => m + c.bytesStored, 0), 0);
      o2.result(`${dir}: intact: ${images} image${images === 1 ? '' : 's'}${r.tree ? ` of ${r.processes.length} processes` : ''}, ${formatBytes(bytes)} of pages checked\n`
        + r.processes.map((p) => p.chain.map((c) => `  ${r.tree ? `${p.pid}: ` : ''}${c.dir} ${c.kind} ${c.contents} ${c.chunks} chunks ${formatBytes(c.bytesStored)}\n`).join('')).join(''));
    });

  program.command('demo')
    .description('walk through tsnap on a sample process: pre-dump twice while it runs, dump, show, restore')
    .option('--dir <dir>', 'where the images go (default: a new temporary directory, removed afterwards)')
    .option('--keep', 'keep the images')
    .addHelpText('after', '\nExample:\n  npm run demo      # the same as: tsnap demo')
    .action(async (o: { dir?: string; keep?: boolean }) => {
      const o2 = out();
      await runDemo({ dir: o.dir, keep: !!o.keep, print: (t: string) => o2.result(t), warn });
    });

  program.command('completion')
    .description('print a shell completion script (bash or zsh)')
    .argument('[shell]', 'bash or zsh', 'bash')
    .addHelpText('after', '\nExamples:\n  tsnap completion bash > /etc/bash_completion.d/tsnap\n  source <(tsnap completion bash)\n  tsnap completion zsh > "${fpath[1]}/_tsnap"')
    .action((shell: string) => {
      if (shell !== 'bash' && shell !== 'zsh') throw new TsnapError('usage', `no completion for ${shell}; use bash or zsh`);
      out().result(completionScript(program, shell));
    });

  // Should a bug leave tsnap waiting on nothing, Node would exit with 0 as if
  // all went well: report it instead.
  let settled = false;
  // A reader that stopped reading (tsnap show --json | head) is not a
  // failure: drop the rest of the output and finish quietly.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE' || err.code === 'ERR_STREAM_DESTROYED') return;
      throw err;
    });
  }
  process.once('beforeExit', () => {
    if (!settled) {
      process.stderr.write('tsnap: internal error: the operation stopped without finishing\n');
      process.exitCode = ExitCode.internal;
    }
  });
  try {
    await program.parseAsync(argv);
  } catch (err) {
    process.exitCode = reportError(err, output);
  } finally {
    settled = true;
  }
}

function reportError(err: unknown, output: Output | null): number {
  if (err instanceof CommanderError) {
    if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
    return ExitCode.usage;
  }
  if (err instanceof TsnapError) {
    // One line, whatever a path or name from an image put in it.
    const message = err.message.replace(/[\r\n]+/g, ' ');
    if (output) output.error(message); else process.stderr.write(`tsnap: ${message}\n`);
    if (process.env.TSNAP_DEBUG && err.cause) process.stderr.write(`${(err.cause as Error).stack ?? err.cause}\n`);
    return err.exitCode;
  }
  process.stderr.write(`tsnap: internal error: ${(err as Error)?.stack ?? err}\n`);
  return ExitCode.internal;
}

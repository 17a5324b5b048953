/** `tsnap dump`: one process, a tree, or the --pre-dumps loop. */
import type { Command } from 'commander';
import { TsnapError } from '../../errors.js';
import type { CliContext } from '../context.js';
import { compressOption, intOption, jsonOption, parseSize, pidOption, type Codec } from '../options.js';
import { reportLoop, reportSet } from '../dump-report.js';

interface DumpFlags {
  pid: number; dir: string; parent?: string; tree?: boolean; tcpEstablished?: boolean; tcpClose?: boolean; extUnixSk?: boolean;
  ghostLimit?: number; preDumps?: number; leaveRunning?: boolean; compress: Codec; fsync: boolean; cow?: boolean; json?: boolean;
}

export function registerDump(program: Command, ctx: CliContext): void {
  program.command('dump')
    .description('freeze a process and write its complete state to an image directory')
    .addOption(pidOption('process to dump'))
    .requiredOption('-d, --dir <dir>', 'image directory to create (must be new or empty)')
    .option('--parent <dir>', 'store only what changed since this pre-dump (incremental)')
    .option('-t, --tree', 'dump the process and all its descendants, frozen together (DIR/<pid> each)')
    .option('--tcp-established', 'take established and half-closed TCP connections with TCP repair mode (locked with iptables rules until restored)')
    .option('--tcp-close', 'take connected TCP sockets as closed ones: they come back shut down, as after a reset')
    .option('--ghost-limit <size>', 'store deleted files that hold up to SIZE bytes of data (holes do not count; default 64M)', parseSize)
    .option('--ext-unix-sk', 'a unix datagram socket connected to a named socket outside the dump (e.g. /dev/log) connects to that name again at restore')
    .option('--pre-dumps <n>', 'pre-dump up to N times while it runs, then dump the last delta: writes DIR/1, DIR/2, ...', intOption('--pre-dumps', 1, 1000))
    .option('-R, --leave-running', 'resume the process after the dump instead of killing it')
    .addOption(compressOption())
    .option('--no-fsync', 'do not fsync the image before killing the process')
    .option('--cow', 'copy-on-write: freeze only to take the state, copy the memory while the process runs (killed after the copy unless --leave-running; the default with --leave-running for processes of 32 MiB or more)')
    .option('--no-cow', 'keep the process frozen for the whole memory copy')
    .addOption(jsonOption())
    .addHelpText('after', '\nExamples:\n  tsnap dump --pid 1234 --dir /var/tmp/img           # dump and kill\n  tsnap dump --pid 1234 --dir img --leave-running --compress lz4\n  tsnap dump --pid 1234 --dir img/3 --parent img/2    # final image of an incremental chain')
    .action((o: DumpFlags) => runDump(o, ctx));
}

async function runDump(o: DumpFlags, ctx: CliContext): Promise<void> {
  const out = ctx.out(o.json);
  const warn = ctx.warn;
  if (o.tcpEstablished && o.preDumps !== undefined) throw new TsnapError('usage', '--tcp-established does not go with --pre-dumps yet; run pre-dump and dump --parent');
  if (o.cow && (o.tree || o.preDumps !== undefined)) warn('--cow applies to single-process dumps for now; this one copies memory frozen');
  if (o.preDumps !== undefined && o.parent) throw new TsnapError('usage', '--pre-dumps and --parent do not go together');
  const common = {
    pid: o.pid, dir: o.dir, parent: o.parent, leaveRunning: !!o.leaveRunning, compression: o.compress,
    fsync: o.leaveRunning ? false : o.fsync, warn, tcpEstablished: o.tcpEstablished, tcpClose: o.tcpClose, extUnixSk: o.extUnixSk, ghostLimit: o.ghostLimit, onProgress: ctx.progress('copying the memory of'),
  };
  if (o.preDumps !== undefined) {
    const { dumpLoop } = await import('../../dump/iterative.js');
    reportLoop(out, await dumpLoop({ ...common, preDumps: o.preDumps }, !!o.tree), o.json);
    return;
  }
  const { takeSet } = await import('../../dump/take-set.js');
  // Copy-on-write is the default of --leave-running without --parent, for processes big enough to gain from it (kill mode and final rounds ask for it with --cow).
  const cow = o.tree ? {} : { cow: o.cow ?? (o.leaveRunning && !o.parent ? 'auto' as const : false) };
  reportSet(out, await takeSet({ ...common, ...cow }, 'dump', !!o.tree), 'dumped', o.json);
}

/** The command line: parses, calls the library, prints. No logic of its own. */
import { Command, Option, CommanderError } from 'commander';
import { dump } from '../dump/dump.js';
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

  program.command('dump')
    .description('freeze a process and write its complete state to an image directory')
    .requiredOption('-p, --pid <pid>', 'process to dump', parsePid)
    .requiredOption('-d, --dir <dir>', 'image directory to create (must be new or empty)')
    .option('-R, --leave-running', 'resume the process after the dump instead of killing it')
    .addOption(new Option('--compress <codec>', 'page compression').choices(['lz4', 'none']).default('none'))
    .option('--no-fsync', 'do not fsync the image before killing the process')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExamples:\n  tsnap dump --pid 1234 --dir /var/tmp/img           # dump and kill\n  tsnap dump --pid 1234 --dir img --leave-running --compress lz4')
    .action(async (o: { pid: number; dir: string; leaveRunning?: boolean; compress: 'lz4' | 'none'; fsync: boolean; json?: boolean }) => {
      const r = await dump({
        pid: o.pid, dir: o.dir, leaveRunning: !!o.leaveRunning, compression: o.compress,
        fsync: o.leaveRunning ? false : o.fsync,
      });
      if (o.json) {
        process.stdout.write(JSON.stringify({ dir: r.dir, imageId: r.imageId, killed: r.killed, stats: r.stats }) + '\n');
        return;
      }
      const s = r.stats;
      process.stdout.write(
        `dumped process ${o.pid} to ${r.dir} (${r.killed ? 'killed' : 'left running'})\n`
        + `  pages: ${s.pagesWritten} written of ${s.pagesScanned} mapped, ${formatBytes(s.bytesRaw)} -> ${formatBytes(s.bytesStored)} stored\n`
        + `  frozen ${formatUs(s.frozenUs)} (freeze ${formatUs(s.freezeUs)}, memory ${formatUs(s.memdumpUs)}, ${s.throughputMiBps.toFixed(0)} MiB/s)\n`,
      );
    });

  program.command('show')
    .description('describe an image: process, registers, memory, files, pages')
    .argument('<dir>', 'image directory')
    .option('--json', 'print the full decoded metadata as JSON')
    .action((dir: string, o: { json?: boolean }) => {
      process.stdout.write(showImage(dir, !!o.json));
    });

  try {
    await program.parseAsync(argv);
  } catch (err) {
    process.exitCode = reportError(err);
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

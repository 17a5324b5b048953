/** `tsnap pre-dump`: copy memory while the process runs, and track its writes. */
import type { Command } from 'commander';
import type { CliContext } from '../context.js';
import { compressOption, jsonOption, pidOption, type Codec } from '../options.js';
import { reportSet } from '../dump-report.js';

interface PreDumpFlags { pid: number; dir: string; parent?: string; tree?: boolean; compress: Codec; json?: boolean }

export function registerPreDump(program: Command, ctx: CliContext): void {
  program.command('pre-dump')
    .description('copy a running process\'s memory and track its writes, for a later incremental dump')
    .addOption(pidOption('process to pre-dump (it keeps running)'))
    .requiredOption('-d, --dir <dir>', 'image directory to create (must be new or empty)')
    .option('--parent <dir>', 'the previous pre-dump: store only pages written since')
    .option('-t, --tree', 'pre-dump the process and all its descendants (DIR/<pid> each)')
    .addOption(compressOption())
    .addOption(jsonOption())
    .addHelpText('after', '\nExamples:\n  tsnap pre-dump --pid 1234 --dir img/1\n  tsnap pre-dump --pid 1234 --dir img/2 --parent img/1\n  tsnap dump     --pid 1234 --dir img/3 --parent img/2\n  tsnap restore  --dir img/3')
    .action((o: PreDumpFlags) => runPreDump(o, ctx));
}

async function runPreDump(o: PreDumpFlags, ctx: CliContext): Promise<void> {
  const out = ctx.out(o.json);
  const opts = { pid: o.pid, dir: o.dir, parent: o.parent, compression: o.compress, warn: ctx.warn, onProgress: ctx.progress('copying the memory of') };
  const { takeSet } = await import('../../dump/take-set.js');
  reportSet(out, await takeSet(opts, 'predump', !!o.tree), 'pre-dumped', o.json);
}

/** `tsnap untrack`: give up the write tracking a pre-dump left on a process. */
import type { Command } from 'commander';
import { TsnapError } from '../../errors.js';
import type { CliContext } from '../context.js';
import { pidOption } from '../options.js';

export function registerUntrack(program: Command, ctx: CliContext): void {
  program.command('untrack')
    .description('stop tracking a process\'s writes: removes every registration and write-protection')
    .addOption(pidOption('the tracked process', false))
    .option('-d, --dir <dir>', 'or: the latest pre-dump of the process')
    .addHelpText('after', '\nExamples:\n  tsnap untrack --pid 1234          # give up incremental dumps of 1234\n  tsnap untrack --dir img/2         # the tracking a pre-dump left behind')
    .action(async (o: { pid?: number; dir?: string }) => {
      if (o.pid === undefined && !o.dir) throw new TsnapError('usage', 'untrack needs --pid or --dir');
      const { untrack, untrackPid } = await import('../../track/untrack.js');
      ctx.out().result(`${o.pid !== undefined ? untrackPid(o.pid) : untrack(o.dir!)}\n`);
    });
}

/** `tsnap check`: the kernel features and privileges this machine has. */
import type { Command } from 'commander';
import { ExitCode } from '../../errors.js';
import type { CliContext } from '../context.js';
import { jsonOption } from '../options.js';
import { jsonLine } from '../json-docs.js';
import { formatCheck } from '../check-table.js';

export function registerCheck(program: Command, ctx: CliContext): void {
  program.command('check')
    .description('test the kernel features and privileges tsnap needs on this machine')
    .addOption(jsonOption())
    .addHelpText('after', '\nExamples:\n  tsnap check\n  tsnap check --json | jq \'.items[] | select(.ok | not)\'\n\nExit status: 0 when everything required works, 9 otherwise.')
    .action(async (o: { json?: boolean }) => {
      const out = ctx.out(o.json);
      const { check } = await import('../../check/check.js');
      const r = await check();
      if (o.json) out.result(jsonLine({ command: 'check', ...r }));
      else out.result(formatCheck(r));
      if (!r.ok) process.exitCode = ExitCode.kernel;
    });
}

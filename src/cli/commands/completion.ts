/** `tsnap completion`: a shell completion script made from the command definitions. */
import type { Command } from 'commander';
import { TsnapError } from '../../errors.js';
import type { CliContext } from '../context.js';
import { completionScript } from '../completion.js';

export function registerCompletion(program: Command, ctx: CliContext): void {
  program.command('completion')
    .description('print a shell completion script (bash or zsh)')
    .argument('[shell]', 'bash or zsh', 'bash')
    .addHelpText('after', '\nExamples:\n  tsnap completion bash > /etc/bash_completion.d/tsnap\n  source <(tsnap completion bash)\n  tsnap completion zsh > "${fpath[1]}/_tsnap"')
    .action((shell: string) => {
      if (shell !== 'bash' && shell !== 'zsh') throw new TsnapError('usage', `no completion for ${shell}; use bash or zsh`);
      ctx.out().result(completionScript(program, shell));
    });
}

/** `tsnap demo`: a guided run on a sample process. */
import type { Command } from 'commander';
import type { CliContext } from '../context.js';

export function registerDemo(program: Command, ctx: CliContext): void {
  program.command('demo')
    .description('walk through tsnap on a sample process: pre-dump twice while it runs, dump, show, restore')
    .option('--dir <dir>', 'where the images go (default: a new temporary directory, removed afterwards)')
    .option('--keep', 'keep the images')
    .addHelpText('after', '\nExample:\n  npm run demo      # the same as: tsnap demo')
    .action(async (o: { dir?: string; keep?: boolean }) => {
      const out = ctx.out();
      const { runDemo } = await import('../../demo/demo.js');
      await runDemo({ dir: o.dir, keep: !!o.keep, print: (t: string) => out.result(t), warn: ctx.warn });
    });
}

/** `tsnap show`: describe an image. */
import type { Command } from 'commander';
import type { CliContext } from '../context.js';
import { jsonOption } from '../options.js';

export function registerShow(program: Command, ctx: CliContext): void {
  program.command('show')
    .description('describe an image: process, registers, memory, files, pages')
    .argument('<dir>', 'image directory')
    .addOption(jsonOption('print the full decoded metadata as JSON'))
    .addHelpText('after', '\nExamples:\n  tsnap show img/3                   # process, threads, memory map, files, chain sizes\n  tsnap show img/3 --json | jq .process.fds')
    .action(async (dir: string, o: { json?: boolean }) => {
      const out = ctx.out(o.json);
      const { showImage } = await import('../show.js');
      out.result(showImage(dir, !!o.json));
    });
}

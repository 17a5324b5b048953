/** `tsnap squash`: fold an incremental chain into one full image. */
import type { Command } from 'commander';
import type { CliContext } from '../context.js';
import { compressOption, type Codec } from '../options.js';

export function registerSquash(program: Command, ctx: CliContext): void {
  program.command('squash')
    .description('fold an incremental chain into one full image')
    .argument('<dir>', 'the newest image of the chain')
    .requiredOption('-o, --out <dir>', 'new image directory')
    .addOption(compressOption('page compression of the new image', false))
    .addHelpText('after', '\nExample:\n  tsnap squash img/3 --out img-full   # one full image, restorable without img/1 and img/2')
    .action(async (dir: string, o: { out: string; compress?: Codec }) => {
      const { squash } = await import('../../image/squash.js');
      const r = await squash(dir, o.out, o.compress);
      ctx.out().result(`squashed ${r.levels} images into ${r.dir}: ${r.pages} pages\n`);
    });
}

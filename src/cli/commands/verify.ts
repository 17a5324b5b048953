/** `tsnap verify`: every checksum of a chain or tree, and its parents. */
import type { Command } from 'commander';
import { formatBytes } from '../../format.js';
import type { CliContext } from '../context.js';
import { jsonOption } from '../options.js';
import { jsonLine } from '../json-docs.js';

export function registerVerify(program: Command, ctx: CliContext): void {
  program.command('verify')
    .description('check every checksum of an image chain (or tree), and that every parent is there and matches')
    .argument('<dir>', 'the newest image of the chain, or a tree image')
    .addOption(jsonOption())
    .addHelpText('after', '\nExamples:\n  tsnap verify img/3            # the image and all its parents\n  tsnap verify backup && tsnap restore --dir backup\n\nExit status: 0 when intact, 7 (bad image) otherwise, naming the damaged file.')
    .action(async (dir: string, o: { json?: boolean }) => {
      const out = ctx.out(o.json);
      const { verify } = await import('../../image/verify.js');
      const r = verify(dir);
      if (o.json) { out.result(jsonLine({ command: 'verify', ok: true, ...r })); return; }
      const images = r.processes.reduce((n, p) => n + p.chain.length, 0);
      const bytes = r.processes.reduce((n, p) => n + p.chain.reduce((m, c) => m + c.bytesStored, 0), 0);
      out.result(`${dir}: intact: ${images} image${images === 1 ? '' : 's'}${r.tree ? ` of ${r.processes.length} processes` : ''}, ${formatBytes(bytes)} of pages checked\n`
        + r.processes.map((p) => p.chain.map((c) => `  ${r.tree ? `${p.pid}: ` : ''}${c.dir} ${c.kind} ${c.contents} ${c.chunks} chunks ${formatBytes(c.bytesStored)}\n`).join('')).join(''));
    });
}

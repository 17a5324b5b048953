/** `tsnap release-locks`: lift the network lock of an image's TCP connections, for an image that will not be restored. */
import type { Command } from 'commander';
import type { CliContext } from '../context.js';

export function registerReleaseLocks(program: Command, ctx: CliContext): void {
  program.command('release-locks')
    .description('give up an image\'s TCP connections: delete the netfilter rules that keep them silent until the restore')
    .requiredOption('-d, --dir <dir>', 'the image (a tree image: every process of it)')
    .addHelpText('after', [
      '',
      'A kill-mode `dump --tcp-established` leaves two DROP rules per connection',
      '(comment "tsnap-lock ID image") until the image is restored. For an image',
      'you will not restore, this deletes them: the peers then see their',
      'connections reset. Restoring the image afterwards still works, but its',
      'connections are likely reset too (restore --tcp-close brings them back closed).',
      '',
      'Examples:',
      '  tsnap release-locks --dir img       # the image will not be restored',
      '  iptables-save | grep "tsnap-lock"   # the rules tsnap holds now',
    ].join('\n'))
    .action(async (o: { dir: string }) => {
      const { releaseImageLocks } = await import('../../files/tcp-release.js');
      const released = releaseImageLocks(o.dir);
      const line = (r: (typeof released)[number]) => `  process ${r.pid} fd ${r.fd} ${r.conn}: ${r.rules ? `${r.rules} rules deleted` : 'no rule left (restored, or deleted already)'}\n`;
      ctx.out().result(released.length === 0
        ? `${o.dir} holds no locked TCP connection\n`
        : `${o.dir}: released ${released.filter((r) => r.rules > 0).length} of ${released.length} locked connection${released.length === 1 ? '' : 's'}\n${released.map(line).join('')}`);
    });
}

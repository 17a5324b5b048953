/** `tsnap restore`: rebuild a process from an image, then wait for it or detach. */
import type { Command } from 'commander';
import { TsnapError } from '../../errors.js';
import { formatBytes, formatUs } from '../../format.js';
import type { CliContext } from '../context.js';
import { jsonOption } from '../options.js';
import { jsonLine } from '../json-docs.js';

interface RestoreFlags {
  dir: string; detach?: boolean; pidfile?: string; newPid?: boolean; stdin?: string; stdout?: string; stderr?: string;
  json?: boolean; check: string; tcpClose?: boolean; lazy?: boolean; lazyLog?: string;
}

export function registerRestore(program: Command, ctx: CliContext): void {
  program.command('restore')
    .description('recreate a process from an image and resume it where it stopped')
    .requiredOption('-d, --dir <dir>', 'image directory')
    .option('--detach', 'return once the process runs instead of waiting for it')
    .option('--pidfile <file>', 'write the restored pid to this file')
    .option('--new-pid', 'restore under a fresh pid instead of the original one')
    .option('--stdin <file>', 'file for the process\'s stdin (default: tsnap\'s own)')
    .option('--stdout <file>', 'file for the process\'s stdout, appended (default: tsnap\'s own)')
    .option('--stderr <file>', 'file for the process\'s stderr, appended (default: tsnap\'s own)')
    .addOption(jsonOption('print the result as JSON (on stderr when not detached: stdout belongs to the process)'))
    .option('--check <mode>', 'compare the rebuilt process with its image before it runs: warn (default) names each difference, strict refuses to start it, off skips', 'warn')
    .option('--tcp-close', 'bring TCP connections of the image back closed (as after a reset) instead of repaired')
    .option('--lazy', 'start the process before its memory is in: pages fault in from the image, a background pager fills the rest')
    .option('--lazy-log <file>', 'with --lazy: where the pager reports (default: stderr)')
    .addHelpText('after', '\nExamples:\n  tsnap restore --dir img                  # run it in the foreground, exit with its status\n  tsnap restore --dir img --detach --pidfile app.pid\n  tsnap restore --dir img --new-pid --detach   # a second copy next to the original')
    .action((o: RestoreFlags) => runRestore(o, ctx));
}

async function runRestore(o: RestoreFlags, ctx: CliContext): Promise<void> {
  const out = ctx.out(o.json);
  const warn = ctx.warn;
  if (o.check !== 'warn' && o.check !== 'strict' && o.check !== 'off') throw new TsnapError('usage', `--check must be warn, strict or off, not "${o.check}"`);
  const { restore, waitForExit } = await import('../../restore/restore.js');
  const r = await restore({
    dir: o.dir, newPid: !!o.newPid, pidfile: o.pidfile, stdin: o.stdin, stdout: o.stdout, stderr: o.stderr, check: o.check, tcpClose: !!o.tcpClose,
    warn, onProgress: ctx.progress('writing the memory of'),
    lazy: o.lazy ? { detach: !!o.detach, log: o.lazyLog } : undefined,
  });
  out.clear();
  const report = o.json
    ? jsonLine({ command: 'restore', pid: r.pid, originalPid: r.originalPid, pids: r.pids, stats: r.stats, warnings: r.warnings })
    : `restored process ${r.originalPid}${r.pid !== r.originalPid ? ` as pid ${r.pid} (new pid)` : ''} from ${o.dir}: ${formatBytes(r.stats.bytesRestored)} in ${formatUs(r.stats.restoreUs)}\n`;
  if (o.detach) {
    out.result(report);
    // The process runs already; tsnap exits once a background pager took its memory over.
    if (r.lazy) {
      const how = await r.lazy.handover();
      if (/^(pager process|lazy fill done)/.test(how)) process.stderr.write(`tsnap: ${how}\n`);
      else warn(how);
    }
    return;
  }
  // The restored process owns stdout now: report on stderr.
  process.stderr.write(report);
  const { kill } = await import('../../sys/index.js');
  const forward = (sig: NodeJS.Signals) => () => { try { kill(r.pid, sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1); } catch { /* gone */ } };
  const handlers = (['SIGINT', 'SIGTERM', 'SIGHUP'] as const).map((s) => [s, forward(s)] as const);
  for (const [s, h] of handlers) process.on(s, h);
  const exit = await waitForExit(r.pid);
  for (const [s, h] of handlers) process.off(s, h);
  await r.lazy?.finish();
  process.exitCode = exit.code ?? 128 + (exit.signal ?? 0);
}

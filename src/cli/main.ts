/**
 * The command line: parses, calls the library, prints. No logic of its own.
 * Each command lives in commands/ and loads the library code it runs only
 * when it runs (start time: `tsnap --version` loads no FFI, no codec).
 */
import { guardianState } from '../sys/guardian-state.js';
import { Command, CommanderError } from 'commander';
import { TsnapError, ExitCode } from '../errors.js';
import { TOOL_VERSION } from '../version.js';
import type { Output } from './output.js';
import { CliContext } from './context.js';
import { COMMANDS } from './commands/index.js';
import { writeFd } from './stdio.js';

export async function main(argv: string[]): Promise<void> {
  const program = new Command();
  program
    .name('tsnap')
    .description('Checkpoint and restore Linux processes, incrementally.')
    .version(TOOL_VERSION)
    .exitOverride()
    .configureOutput({ writeOut: (s) => writeFd(1, s), writeErr: (s) => writeFd(2, s) })
    .option('-q, --quiet', 'print results and errors only: no progress line, no warnings')
    .option('-v, --verbose', 'also print each step as it happens')
    .option('--log-file <file>', 'append a timestamped record of steps, warnings, results and errors to FILE')
    .addHelpText('after', '\nStart with:\n  tsnap check          # what this machine supports\n  npm run demo         # dump, pre-dump and restore a sample process, step by step\n\nEach command has examples: tsnap help <command>.');

  const ctx = new CliContext(program);
  for (const register of COMMANDS) register(program, ctx);

  // Should a bug leave tsnap waiting on nothing, Node would exit with 0 as if
  // all went well: report it instead.
  let settled = false;
  // A reader that stopped reading (tsnap show --json | head) is not a
  // failure: drop the rest of the output and finish quietly. tsnap's own
  // lines go to the fds (cli/stdio.ts); a stream is made only if some code
  // asks for it, and gets the handler then (making both up front cost a
  // small dump ~15 ms of CPU).
  for (const name of ['stdout', 'stderr'] as const) onStream(name, (stream) => {
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE' || err.code === 'ERR_STREAM_DESTROYED') return;
      throw err;
    });
  });
  process.once('beforeExit', () => {
    if (!settled) {
      writeFd(2, 'tsnap: internal error: the operation stopped without finishing\n');
      process.exitCode = ExitCode.internal;
    }
  });
  try {
    await program.parseAsync(argv);
  } catch (err) {
    process.exitCode = reportError(err, ctx.started());
  } finally {
    settled = true;
    // A command ends with its guardian: nothing of it outlives tsnap.
    if (guardianState.started) (await import('../sys/guardian.js')).Guardian.shutdownAndWait();
  }
}

function reportError(err: unknown, output: Output | null): number {
  if (err instanceof CommanderError) {
    if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
    return ExitCode.usage;
  }
  if (err instanceof TsnapError) {
    // One line, whatever a path or name from an image put in it.
    const message = err.message.replace(/[\r\n]+/g, ' ');
    if (output) output.error(message); else writeFd(2, `tsnap: ${message}\n`);
    if (process.env.TSNAP_DEBUG && err.cause) writeFd(2, `${(err.cause as Error).stack ?? err.cause}\n`);
    return err.exitCode;
  }
  writeFd(2, `tsnap: internal error: ${(err as Error)?.stack ?? err}\n`);
  return ExitCode.internal;
}

/** Runs `attach` on process[name] when that stream is first made (at once if it cannot tell). */
function onStream(name: 'stdout' | 'stderr', attach: (s: NodeJS.WriteStream) => void): void {
  const d = Object.getOwnPropertyDescriptor(process, name);
  const get = d?.get;
  if (!get || !d.configurable) { attach(process[name]); return; }
  let seen = false;
  Object.defineProperty(process, name, {
    configurable: true,
    enumerable: d.enumerable,
    get() {
      const s = get.call(process) as NodeJS.WriteStream;
      if (!seen) { seen = true; attach(s); }
      return s;
    },
  });
}

/**
 * What every command's action shares: the output settings (the global
 * options plus the command's own --json), warnings and the progress line.
 * The Output is created when the action starts, so that an error reported
 * afterwards goes through the same settings (--quiet, --log-file).
 */
import type { Command } from 'commander';
import { Output } from './output.js';

export type ProgressEvent = { bytes: number; total: number; pid: number };

export class CliContext {
  private output: Output | null = null;

  constructor(private readonly program: Command) {}

  /** Starts the command's output: global options plus its own --json. */
  out(json?: boolean): Output {
    this.output = new Output({ ...this.program.opts(), json });
    return this.output;
  }

  /** The command's output, or one from the global options if it has not started one. */
  current(): Output {
    return this.output ?? this.out();
  }

  /** The output an error goes to, if a command got that far. */
  started(): Output | null {
    return this.output;
  }

  readonly warn = (m: string): void => this.current().warn(m);

  progress(label: string): (p: ProgressEvent) => void {
    return (p) => this.current().progress(`${label} ${p.pid}`, p.bytes, p.total);
  }
}

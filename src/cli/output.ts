/**
 * What the CLI prints, and where: results on stdout, warnings and errors
 * on stderr, a live progress line on stderr only when it is a terminal,
 * and with --log-file a timestamped record of everything.
 *   --quiet    results and errors only (no progress, no warnings)
 *   --verbose  also each step as it happens
 *   --json     machine output on stdout; no progress line either
 */
import { appendFileSync } from 'node:fs';
import { formatBytes } from '../format.js';
import { stderrSink, writeFd, type LineSink } from './stdio.js';

export interface OutputOptions {
  quiet?: boolean;
  verbose?: boolean;
  logFile?: string;
  json?: boolean;
}

export class Output {
  private lastDraw = 0;
  private drawn = false;
  private readonly started = new Map<string, number>();
  private readonly tty: boolean;

  constructor(private readonly o: OutputOptions, private readonly stderr: LineSink = stderrSink) {
    this.tty = !!stderr.isTTY && !o.quiet && !o.json;
  }

  private log(kind: string, msg: string): void {
    if (!this.o.logFile) return;
    try {
      appendFileSync(this.o.logFile, `${new Date().toISOString()} ${kind} ${msg}\n`, { mode: 0o600 });
    } catch { /* a log that cannot be written must not fail the operation */ }
  }

  /** A result line (stdout), unless --json prints the result instead. */
  result(text: string): void {
    this.clear();
    this.log('result', text.trimEnd().replace(/\n/g, ' | '));
    writeFd(1, text);
  }

  warn(msg: string): void {
    this.log('warning', msg);
    if (this.o.quiet) return;
    this.clear();
    this.stderr.write(`tsnap: warning: ${msg}\n`);
  }

  /** A step, shown with --verbose (always logged). */
  step(msg: string): void {
    this.log('step', msg);
    if (!this.o.verbose) return;
    this.clear();
    this.stderr.write(`tsnap: ${msg}\n`);
  }

  error(msg: string): void {
    this.log('error', msg);
    this.clear();
    this.stderr.write(`tsnap: ${msg}\n`);
  }

  /**
   * The progress line of a long step: done/total bytes, rate and time left.
   * Redrawn at most 10 times a second, on a terminal only.
   */
  progress(label: string, done: number, total: number): void {
    const now = Date.now();
    if (!this.started.has(label)) { this.started.set(label, now); this.step(`${label}...`); }
    if (!this.tty || (now - this.lastDraw < 100 && done < total)) return;
    this.lastDraw = now;
    const secs = (now - this.started.get(label)!) / 1000;
    const rate = secs > 0 ? done / secs : 0;
    const pct = total > 0 ? Math.min(100, (done / total) * 100) : 0;
    const eta = rate > 0 && total > done ? `, ${Math.ceil((total - done) / rate)} s left` : '';
    const line = `${label}: ${formatBytes(done)}${total > 0 ? ` of ${formatBytes(total)} (${pct.toFixed(0)}%)` : ''}, ${(rate / (1 << 20)).toFixed(0)} MiB/s${eta}`;
    this.stderr.write(`\r\x1b[2K${line}`);
    this.drawn = true;
  }

  /** Removes the progress line before anything else is printed. */
  clear(): void {
    if (!this.drawn) return;
    this.stderr.write('\r\x1b[2K');
    this.drawn = false;
  }
}

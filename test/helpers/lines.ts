/**
 * The lines a process writes, and waiting for one: for a fixture's stdout
 * (fixtures.ts), a restored process's (tsnap.ts), a tsnap's JSON events on
 * stderr (serve.ts, scenarios.ts).
 */
import type { Readable } from 'node:stream';

function nonGlobal(re: RegExp): RegExp {
  return re.global || re.sticky ? new RegExp(re.source, re.flags.replace(/[gy]/g, '')) : re;
}

export class LineLog {
  /** Every whole line so far (the live array). */
  readonly lines: string[] = [];
  private partial = '';
  private ended = false;
  private readonly listeners = new Set<() => void>();

  /** `name` and `describe` (the output so far, the exit): what a failed wait reports. */
  constructor(private readonly name = 'process', private readonly describe: () => string = () => '') {}

  /** Reads `stream` as UTF-8 text; its end ends the log unless `endWithStream` is false (the caller ends it). */
  follow(stream: Readable | null | undefined, endWithStream = true): this {
    if (!stream) return this;
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => this.text(chunk));
    stream.on('end', () => { this.flush(); if (endWithStream) this.end(); });
    return this;
  }

  text(chunk: string): void {
    this.partial += chunk;
    const parts = this.partial.split('\n');
    this.partial = parts.pop() ?? '';
    this.lines.push(...parts);
    if (parts.length) this.notify();
  }

  /** A last line without its newline. */
  flush(): void {
    if (!this.partial) return;
    this.lines.push(this.partial);
    this.partial = '';
    this.notify();
  }

  /** No more lines will come: a wait for one not seen yet fails at once. */
  end(): void {
    if (this.ended) return;
    this.flush();
    this.ended = true;
    this.notify();
  }

  /** The first line matching `re` at index `from` or later (lines already there count). */
  waitFor(re: RegExp, timeoutMs: number, from = 0, what = 'line'): Promise<string> {
    const r = nonGlobal(re);
    return new Promise<string>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const finish = (fn: () => void) => {
        this.listeners.delete(check);
        if (timer) clearTimeout(timer);
        fn();
      };
      const check = () => {
        for (let i = from; i < this.lines.length; i++) {
          if (r.test(this.lines[i])) {
            const line = this.lines[i];
            finish(() => resolve(line));
            return;
          }
        }
        if (this.ended) finish(() => reject(new Error(`${this.name}: exited before ${what} ${r}\n${this.describe()}`)));
      };
      this.listeners.add(check);
      timer = setTimeout(() => finish(() => reject(new Error(`${this.name}: timeout (${timeoutMs} ms) waiting for ${what} ${r}\n${this.describe()}`))), timeoutMs);
      check();
    });
  }

  private notify(): void {
    for (const l of [...this.listeners]) l();
  }
}

/**
 * The step a restore is at, so that a failure names it: "restore failed
 * while trying to <step>: <why>". Errors that already say what to do (a
 * TsnapError of another kind) pass unchanged.
 */
import { TsnapError, asTsnapError } from '../errors.js';
import { mark } from '../trace.js';

export class Steps {
  constructor(private name: string) {}

  /** Enters step `name` (a phrase after "while trying to"). */
  at(name: string): void {
    mark(`restore: ${name}`);
    this.name = name;
  }

  get current(): string {
    return this.name;
  }

  /** What a failure during the current step is reported as. */
  failure(err: unknown, context: string): TsnapError {
    const e = asTsnapError(err, context);
    if (e.kind === 'internal') return new TsnapError('restoreFailed', `restore failed while trying to ${this.name}: ${e.message}`, err);
    return e;
  }
}

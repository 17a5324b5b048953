/**
 * Every command, in the order --help lists them. A command's module defines
 * its options statically and imports the library code it runs only when it
 * runs, so that starting the CLI loads one command's dependencies, not all.
 */
import type { Command } from 'commander';
import type { CliContext } from '../context.js';
import { registerDump } from './dump.js';
import { registerPreDump } from './pre-dump.js';
import { registerUntrack } from './untrack.js';
import { registerReleaseLocks } from './release-locks.js';
import { registerRestore } from './restore.js';
import { registerSquash } from './squash.js';
import { registerServe } from './serve.js';
import { registerMigrate } from './migrate.js';
import { registerShow } from './show.js';
import { registerCheck } from './check.js';
import { registerVerify } from './verify.js';
import { registerDemo } from './demo.js';
import { registerCompletion } from './completion.js';

export const COMMANDS: ((program: Command, ctx: CliContext) => void)[] = [
  registerDump, registerPreDump, registerUntrack, registerReleaseLocks, registerRestore, registerSquash, registerServe,
  registerMigrate, registerShow, registerCheck, registerVerify, registerDemo, registerCompletion,
];

/**
 * The tsnap library API: what the CLI itself calls (src/cli only parses
 * arguments and prints). Every function keeps the CLI's guarantees: a
 * failed or interrupted dump leaves its target running as before, a failed
 * restore leaves nothing running, and errors are TsnapErrors with a kind
 * and an exit code.
 *
 *   import { dump, preDump, restore, migrate } from 'tsnap';
 *   const pre = await preDump({ pid, dir: '/var/tmp/app/1' });
 *   const fin = await dump({ pid, dir: '/var/tmp/app/2', parent: pre.dir });
 *   const { pid: again } = await restore({ dir: fin.dir });
 */
export { dump, preDump, type DumpOptions, type PreDumpOptions, type DumpResult } from './dump/dump.js';
export { dumpTree, listTree, type TreeDumpResult } from './dump/tree.js';
export { dumpIteratively } from './dump/iterative.js';
export { restore, waitForExit, type RestoreOptions, type RestoreResult, type RestoreStats } from './restore/restore.js';
export { migrate, type MigrateOptions, type MigrateResult } from './migrate/sender.js';
export { serve } from './migrate/receiver.js';
export { untrack, untrackPid } from './track/untrack.js';
export { squash } from './image/squash.js';
export { verify, type VerifyResult, type VerifiedImage } from './image/verify.js';
export { check, type CheckResult, type CheckItem } from './check/check.js';
export { readImage, readChain, type Image } from './image/image-reader.js';
export { isTreeImage, readTreeManifest } from './image/tree-manifest.js';
export { TsnapError, ExitCode } from './errors.js';
export * from '../formats/schema.js';

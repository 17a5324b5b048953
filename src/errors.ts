/**
 * User-facing failures. Each class of failure has its own exit code so that
 * scripts can tell "the pid is gone" from "the image is corrupt" from "the
 * disk is full". The message is one line that says what to do.
 */
import { constants as osConstants } from 'node:os';
import { SysError } from './sys/errors.js';

export const ExitCode = {
  ok: 0,
  internal: 1,
  usage: 2,
  noSuchProcess: 3,
  permission: 4,
  unsupported: 5,
  imageDir: 6,
  badImage: 7,
  noSpace: 8,
  kernel: 9,
  targetFailed: 10,
  pidTaken: 11,
  restoreFailed: 12,
  interrupted: 130,
} as const;
export type ErrorKind = keyof typeof ExitCode;

export class TsnapError extends Error {
  readonly kind: ErrorKind;
  readonly exitCode: number;
  /** The underlying system error, when there is one. */
  override readonly cause?: unknown;
  constructor(kind: ErrorKind, message: string, cause?: unknown, exitCode?: number) {
    super(message);
    this.name = 'TsnapError';
    this.kind = kind;
    this.exitCode = exitCode ?? ExitCode[kind];
    this.cause = cause;
  }
}

/**
 * tsnap stopped on a signal after letting everything go: it exits as the
 * signal's default action would have, 128 + signo (130 for SIGINT, 143 for
 * SIGTERM, 129 for SIGHUP), so that shells and supervisors see the signal.
 */
export function interrupted(sig: NodeJS.Signals, message: string): TsnapError {
  return new TsnapError('interrupted', message, undefined, 128 + (osConstants.signals[sig] ?? 2));
}

/** The same interruption, told from further up (e.g. the tree instead of one of its processes). */
export function retellInterrupted(err: TsnapError, message: (sig: string) => string): TsnapError {
  const sig = Object.entries(osConstants.signals).find(([, n]) => n === err.exitCode - 128)?.[0] ?? 'a signal';
  return new TsnapError('interrupted', message(sig), err.cause, err.exitCode);
}

/** Maps an arbitrary failure to a TsnapError, keeping TsnapErrors as they are. */
export function asTsnapError(err: unknown, context: string): TsnapError {
  if (err instanceof TsnapError) return err;
  if (err instanceof SysError) {
    if (err.code === 'ENOSPC' || err.code === 'EDQUOT') {
      return new TsnapError('noSpace', `${context}: no space left on the device (${err.call}); free space or choose another --dir`, err);
    }
    if (err.code === 'ESRCH') return new TsnapError('noSuchProcess', `${context}: the process is gone (${err.call})`, err);
    if (err.code === 'EPERM' || err.code === 'EACCES') {
      // As root, "run as root" is no help: the kernel checks more than the uid.
      const hint = process.geteuid?.() === 0
        ? 'tsnap runs as root, so the process holds capabilities this tsnap lacks (compare CapPrm in /proc/PID/status with tsnap\'s CapEff) or a security module forbids tracing it'
        : 'run as root or as the process owner with ptrace allowed';
      return new TsnapError('permission', `${context}: permission denied (${err.call}); ${hint}`, err);
    }
    return new TsnapError('internal', `${context}: ${err.message}`, err);
  }
  const e = err as NodeJS.ErrnoException;
  if (e && (e.code === 'ENOSPC' || e.code === 'EDQUOT')) {
    return new TsnapError('noSpace', `${context}: no space left on the device${e.path ? ` writing ${e.path}` : ''}; free space or choose another --dir`, err);
  }
  if (e && e.code === 'EROFS') {
    return new TsnapError('imageDir', `${context}: ${e.path ?? 'the image directory'} is on a read-only file system; choose another --dir`, err);
  }
  if (e && (e.code === 'EACCES' || e.code === 'EPERM')) {
    return new TsnapError('permission', `${context}: permission denied: ${e.path ?? e.message}`, err);
  }
  return new TsnapError('internal', `${context}: ${e?.message ?? String(err)}`, err);
}

/**
 * Names the file an fd-based write failed on: Node's errors from write(fd)
 * carry no path, and "no space left writing" with no name helps nobody.
 */
export function withPath(err: unknown, path: string): unknown {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e === 'object' && e.code && !e.path) e.path = path;
  return err;
}

/**
 * Whether tsnap can hold a task with its seccomp filters suspended
 * (PTRACE_O_SUSPEND_SECCOMP). Every syscall tsnap makes a frozen task run
 * (the state batch, the scratch mapping, the page pipes) would otherwise go
 * through the task's own filters, which may kill it for one it never makes
 * itself. The kernel allows the option to a tracer with CAP_SYS_ADMIN that
 * is not under seccomp itself.
 */
import { readTaskCreds } from '../proc/creds.js';
import { CAP_SYS_ADMIN } from '../sys/index.js';

let cached: string | null | undefined;

/** null when tsnap can; else why it cannot, for a refusal's message. */
export function seccompSuspendObstacle(): string | null {
  if (cached !== undefined) return cached;
  const own = readTaskCreds(process.pid, process.pid);
  if (own.seccomp !== 0) cached = `tsnap itself runs under seccomp (mode ${own.seccomp})`;
  else if (((own.capEff >> BigInt(CAP_SYS_ADMIN)) & 1n) === 0n) cached = 'tsnap lacks CAP_SYS_ADMIN';
  else cached = null;
  return cached;
}

export function canSuspendSeccomp(): boolean {
  return seccompSuspendObstacle() === null;
}

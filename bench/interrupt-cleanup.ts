/**
 * What a bench leaves behind when it does not reach its own `finally`:
 * image directories of several GiB on /dev/shm (memory, on tmpfs), the
 * workloads it started, the receivers' namespaces.
 *
 * Interrupted (SIGINT, SIGTERM, SIGHUP), a Node process exits without
 * running `finally` blocks: the steps registered here run instead,
 * synchronously, newest first, and the process exits as the signal would
 * have ended it. Killed (SIGKILL, the OOM killer), nothing of it runs: its
 * directories carry its pid in their names, and the next bench that makes
 * one with the same prefix removes those whose owner is gone.
 */
import { mkdtempSync, readdirSync, rmSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { constants } from 'node:os';

const steps: (() => void)[] = [];
let installed = false;

function runSteps(): void {
  for (const step of steps.splice(0).reverse()) {
    try { step(); } catch { /* the rest still runs */ }
  }
}

function install(): void {
  if (installed) return;
  installed = true;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      runSteps();
      process.exit(128 + constants.signals[sig]);
    });
  }
}

/** Runs `step` should the bench be interrupted before the returned function is called (its own cleanup ran). */
export function onInterrupt(step: () => void): () => void {
  install();
  steps.push(step);
  return () => {
    const i = steps.lastIndexOf(step);
    if (i >= 0) steps.splice(i, 1);
  };
}

/** SIGKILLs `pid` should the bench be interrupted (a workload, a receiver's namespace). */
export function killOnInterrupt(pid: number | undefined): () => void {
  return onInterrupt(() => { if (pid) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } } });
}

const DIR_PID = /-(\d+)-[^-]*$/;

function alive(pid: number): boolean {
  return existsSync(`/proc/${pid}`);
}

/**
 * A new directory `parent/prefix<pid>-XXXXXX`, removed should the bench be
 * interrupted; first, the directories of earlier benches with the same
 * prefix whose process is gone are removed (a killed bench's leftovers).
 */
export function benchDir(parent: string, prefix: string): string {
  let names: string[] = [];
  try { names = readdirSync(parent); } catch { /* made below */ }
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const m = DIR_PID.exec(name.slice(prefix.length - 1));
    if (m && Number(m[1]) !== process.pid && !alive(Number(m[1]))) rmSync(join(parent, name), { recursive: true, force: true });
  }
  const dir = mkdtempSync(join(parent, `${prefix}${process.pid}-`));
  onInterrupt(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

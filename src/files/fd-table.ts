/**
 * Processes that share one fd table (clone with CLONE_FILES, not a thread).
 * Restore can give a child its parent's table again by forking it with
 * CLONE_FILES, so sharing along parent links comes back; a table shared
 * any other way (with a sibling whose parent has its own table, after the
 * parent unshared...) cannot be rebuilt and is refused, naming the two.
 */
import { sameFdTable } from '../sys/index.js';
import { TsnapError } from '../errors.js';

/**
 * `members`: parents first. Returns the pids that share their parent's
 * table (restore forks them with CLONE_FILES).
 */
export function sharedFdTables(members: { pid: number; ppid: number }[]): Set<number> {
  const same = (a: number, b: number) => { try { return sameFdTable(a, b); } catch { return false; /* one is gone */ } };
  const withParent = new Set<number>();
  /** The topmost process whose table each one uses. */
  const table = new Map<number, number>();
  for (const m of members) {
    const inherits = table.has(m.ppid) && same(m.pid, m.ppid);
    if (inherits) withParent.add(m.pid);
    table.set(m.pid, inherits ? table.get(m.ppid)! : m.pid);
  }
  for (let i = 0; i < members.length; i++) {
    for (let j = i + 1; j < members.length; j++) {
      const [a, b] = [members[i].pid, members[j].pid];
      if (table.get(a) !== table.get(b) && same(a, b)) {
        throw new TsnapError('unsupported', `processes ${a} and ${b} share one fd table (clone with CLONE_FILES) that neither got from its parent; tsnap restores fd tables shared along parent and child only`);
      }
    }
  }
  return withParent;
}

/** Restore's self-check: each child shares the parent's table exactly when the image says so. */
export function fdTableDiff(pid: number, children: { pid: number; shared: boolean }[]): string[] {
  return children.filter((c) => sameFdTable(pid, c.pid) !== c.shared)
    .map((c) => `child ${c.pid} ${c.shared ? 'has a fd table of its own' : 'shares the fd table'}, the image's ${c.shared ? 'shares it' : 'has its own'}`);
}

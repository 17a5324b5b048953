/**
 * Slowing a migration's source down so that pre-copy converges (QEMU's
 * auto-converge, for a process): the target's threads move into a child
 * cgroup of the cgroup v1 `cpu` hierarchy with a CFS bandwidth quota, and
 * come back when the migration ends, however it ends.
 *
 * Why a CPU quota and not a freezer (or ptrace) duty cycle: the kernel
 * enforces the quota by itself, so a tsnap busy copying (its main thread
 * blocks for long stretches in process_vm_readv) cannot stretch a pause
 * the way a late thaw timer would; it leaves ptrace, the tracking holder
 * and the final freeze alone; and undoing it is stateless: "move every
 * task of the child to its parent, remove the child", which the guardian
 * can do from a directory fd alone when tsnap is SIGKILLed.
 *
 * Placement is restored exactly because every child is made under the
 * very cgroup its tasks came from (tsnap-throttle-<tsnap pid>.<start time>, one per
 * distinct cgroup among the threads): the parent's own limits still apply
 * (cgroup v1 quotas are hierarchical), and threads or children the target
 * creates meanwhile, born in the child, go back to the cgroup their
 * creator came from. (A source whose threads sit in several cgroups gets
 * the whole allowance in each child: rare, and erring on the side of
 * throttling less.)
 *
 * "Throttle N%" takes N% of the CPU time the source used before it was
 * throttled (measured from /proc/PID/task/TID/schedstat): a paced writer
 * that uses 3% of a CPU is held to 2.4% at 20%, which a quota of its own
 * size would not do. The quota period is the shortest (from 10 ms) that
 * lets the quota be the kernel's minimum of 1 ms or more, so that the
 * pauses the process sees stay as short as the throttle allows.
 */
import { existsSync, mkdirSync, openSync, closeSync, readFileSync, readdirSync, rmdirSync, writeFileSync, constants as fsc } from 'node:fs';
import { join } from 'node:path';
import { Guardian } from '../sys/index.js';
import { readStat } from '../proc/index.js';

const PREFIX = 'tsnap-throttle-';
/** A child's owner, by pid and start time: pid_max is 32768 here, and a pid alone is soon someone else's. */
const OWN_NAME = (() => { let own: string | null = null; return () => (own ??= `${PREFIX}${process.pid}.${readStat(process.pid).startTime}`); })();

/** The name of the throttle children of this tsnap: tsnap-throttle-<pid>.<start time>. */
export function ownThrottleName(): string {
  return OWN_NAME();
}
const MIN_QUOTA_US = 1000;
const MIN_PERIOD_US = 10_000;
const MAX_PERIOD_US = 1_000_000;

export interface ThrottleSetting {
  throttlePct: number;
  /** CPUs' worth of time the source may use (1 = one CPU all the time). */
  allowedCpus: number;
  quotaUs: number;
  periodUs: number;
}

interface Child {
  parent: string;
  dir: string;
  hold: bigint | null;
}

/** The cgroup v1 hierarchy with the cpu controller, or null (cgroup v2 only, or not mounted). */
export function cpuHierarchy(): string | null {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!post) continue;
    const [fstype, , opts] = post.split(' ');
    if (fstype === 'cgroup' && opts.split(',').includes('cpu')) return pre.split(' ')[4];
  }
  return null;
}

/** The thread's cgroup in the cpu hierarchy ("/" for the root). */
function cpuCgroupOf(pid: number, tid: number): string | null {
  try {
    for (const line of readFileSync(`/proc/${pid}/task/${tid}/cgroup`, 'utf8').split('\n')) {
      const m = /^\d+:([^:]*):(.*)$/.exec(line);
      if (m && m[1].split(',').includes('cpu')) return m[2];
    }
  } catch { /* gone */ }
  return null;
}

function tidsOf(pid: number): number[] {
  try { return readdirSync(`/proc/${pid}/task`).map(Number); } catch { return []; }
}

/** The process and, for a tree, all its descendants, as they are now. */
function processesOf(root: number, tree: boolean): number[] {
  const out = [root];
  for (let i = 0; tree && i < out.length; i++) {
    for (const tid of tidsOf(out[i])) {
      try {
        for (const c of readFileSync(`/proc/${out[i]}/task/${tid}/children`, 'utf8').trim().split(/\s+/)) if (c) out.push(Number(c));
      } catch { /* gone */ }
    }
  }
  return out;
}

/** Nanoseconds the processes' live threads have spent on a CPU. */
function cpuNs(pids: number[]): number {
  let ns = 0;
  for (const pid of pids) {
    for (const tid of tidsOf(pid)) {
      try { ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]); } catch { /* gone */ }
    }
  }
  return ns;
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Moves every task of `dir` to `parent`; true when none was left to move. */
function moveTasksUp(dir: string, parent: string): boolean {
  let tids: string[];
  try { tids = readFileSync(join(dir, 'tasks'), 'utf8').split('\n').filter(Boolean); } catch { return true; }
  for (const tid of tids) {
    try { writeFileSync(join(parent, 'tasks'), tid); } catch { /* exited meanwhile */ }
  }
  return tids.length === 0;
}

/** Lifts a throttle: quota off at once, every task back, the child removed. Never throws. */
function undo(dir: string, parent: string): boolean {
  try { writeFileSync(join(dir, 'cpu.cfs_quota_us'), '-1'); } catch { /* removed already */ }
  for (let i = 0; i < 1000 && !moveTasksUp(dir, parent); i++) { /* threads born meanwhile */ }
  for (let i = 0; i < 50; i++) {
    try { rmdirSync(dir); return true; } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true;
      moveTasksUp(dir, parent);
      sleepSync(10);
    }
  }
  return false;
}

function ownerAlive(name: string): boolean {
  const m = /^tsnap-throttle-(\d+)\.(\d+)$/.exec(name);
  if (!m) return true; // not ours to judge
  try { return readStat(Number(m[1])).startTime === Number(m[2]); } catch { return false; }
}

/** Throttle children left by a tsnap that died together with its guardian, under `parent` (and, with depth, below it). */
function sweepDead(parent: string, depth = 0): void {
  let names: string[];
  try { names = readdirSync(parent, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name); } catch { return; }
  for (const n of names) {
    if (n.startsWith(PREFIX)) {
      if (!ownerAlive(n)) undo(join(parent, n), parent);
    } else if (depth > 0) {
      sweepDead(join(parent, n), depth - 1);
    }
  }
}

/**
 * Every throttle a dead tsnap (and its dead guardian) left anywhere in
 * the cpu hierarchy (a few levels deep): its tasks run at full speed in
 * their own cgroups again. Each migration does this once when it starts.
 */
export function sweepDeadThrottles(): void {
  const root = cpuHierarchy();
  if (root) sweepDead(root, 8);
}

/**
 * One migration's throttle of its source. Construct it when the migration
 * starts (the baseline CPU use is measured from then on, unthrottled);
 * `set` before a round; `release` on every way out.
 */
export class SourceThrottle {
  private readonly t0 = process.hrtime.bigint();
  private readonly ns0: number;
  private baselineCpus: number | null = null;
  private readonly children = new Map<string, Child>();
  private current: ThrottleSetting | null = null;

  constructor(private readonly pid: number, private readonly tree: boolean, private readonly warn?: (m: string) => void) {
    this.ns0 = cpuNs(processesOf(pid, tree));
  }

  /** Why throttling cannot work here, or null when it can. */
  static unavailable(): string | null {
    const root = cpuHierarchy();
    if (!root) return 'no cgroup v1 cpu hierarchy is mounted';
    if (!existsSync(join(root, 'cpu.cfs_quota_us'))) return `${root} has no CFS bandwidth control (cpu.cfs_quota_us)`;
    return null;
  }

  get setting(): ThrottleSetting | null { return this.current; }

  /** Holds the source to (100 - pct)% of the CPU time it used unthrottled. */
  set(pct: number): ThrottleSetting {
    if (this.baselineCpus === null) {
      const secs = Number(process.hrtime.bigint() - this.t0) / 1e9;
      this.baselineCpus = Math.max((cpuNs(processesOf(this.pid, this.tree)) - this.ns0) / 1e9 / Math.max(secs, 1e-3), 0.001);
    }
    const allowed = this.baselineCpus * (1 - pct / 100);
    const periodUs = Math.min(MAX_PERIOD_US, Math.max(MIN_PERIOD_US, Math.ceil(MIN_QUOTA_US / allowed)));
    const quotaUs = Math.max(MIN_QUOTA_US, Math.round(allowed * periodUs));
    this.current = { throttlePct: pct, allowedCpus: +allowed.toFixed(4), quotaUs, periodUs };
    this.moveIn();
    for (const c of this.children.values()) this.applyQuota(c);
    return this.current;
  }

  /** Quota off at once; the tasks stay where they are until `release`. Never throws. */
  lift(): void {
    for (const c of this.children.values()) {
      try { writeFileSync(join(c.dir, 'cpu.cfs_quota_us'), '-1'); } catch { /* release removes it anyway */ }
    }
  }

  /** Every task back in the cgroup it came from, every child removed. Idempotent, never throws. */
  release(): void {
    for (const [key, c] of this.children) {
      if (!undo(c.dir, c.parent)) this.warn?.(`could not remove the throttle cgroup ${c.dir} (its quota is lifted)`);
      if (c.hold !== null) {
        try { Guardian.get().dropThrottle(c.hold); } catch { /* the guardian is gone: nothing to drop */ }
      }
      this.children.delete(key);
    }
    this.current = null;
  }

  private childFor(cgroup: string): Child {
    let c = this.children.get(cgroup);
    if (c) return c;
    const root = cpuHierarchy();
    if (!root) throw new Error('no cgroup v1 cpu hierarchy');
    const parent = join(root, cgroup);
    if (cgroup.split('/').some((p) => p.startsWith(PREFIX))) throw new Error(`the source is already throttled by another tsnap (${parent})`);
    sweepDead(parent);
    const dir = join(parent, OWN_NAME());
    mkdirSync(dir);
    c = { parent, dir, hold: null };
    this.children.set(cgroup, c);
    // The guardian gets the undo before any task moves in: a SIGKILL from here on leaves nothing throttled.
    const fd = openSync(parent, fsc.O_RDONLY | fsc.O_DIRECTORY);
    try { c.hold = Guardian.get().holdThrottle(fd, process.pid, readStat(process.pid).startTime); } finally { closeSync(fd); }
    return c;
  }

  /** Every thread of the source (and of its tree) into the child of its own cgroup, until none is left out. */
  private moveIn(): void {
    for (let pass = 0; pass < 10; pass++) {
      let moved = 0;
      for (const pid of processesOf(this.pid, this.tree)) {
        for (const tid of tidsOf(pid)) {
          const cg = cpuCgroupOf(pid, tid);
          if (cg === null || cg.split('/').at(-1) === OWN_NAME()) continue;
          const c = this.childFor(cg);
          try { writeFileSync(join(c.dir, 'tasks'), String(tid)); moved++; } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
          }
        }
      }
      if (moved === 0) return;
    }
  }

  /** A child's quota may not exceed its parent's (cgroup v1 checks the hierarchy): the parent's limit wins. */
  private applyQuota(c: Child): void {
    const s = this.current!;
    let quota = s.quotaUs;
    try {
      const pq = Number(readFileSync(join(c.parent, 'cpu.cfs_quota_us'), 'utf8'));
      const pp = Number(readFileSync(join(c.parent, 'cpu.cfs_period_us'), 'utf8'));
      if (pq > 0) quota = Math.max(MIN_QUOTA_US, Math.min(quota, Math.floor(pq * s.periodUs / pp)));
    } catch { /* the root has no limit files of its own to mind */ }
    // Unlimited first: a new period with the old quota may break the parent's rule on the way.
    writeFileSync(join(c.dir, 'cpu.cfs_quota_us'), '-1');
    writeFileSync(join(c.dir, 'cpu.cfs_period_us'), String(s.periodUs));
    writeFileSync(join(c.dir, 'cpu.cfs_quota_us'), String(quota));
  }
}

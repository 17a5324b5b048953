/**
 * Installing each restored thread's seccomp filters again, oldest first,
 * and strict mode last. The filters that every thread has in common (one
 * installed before the threads were made, or with TSYNC) are installed once
 * with SECCOMP_FILTER_FLAG_TSYNC, so the threads share them as they did and
 * a later TSYNC of the program's own still finds its threads compatible; the
 * rest thread by thread.
 *
 * From the first filter on, every syscall the restore still makes the
 * task run would go through them: each thread is held with
 * PTRACE_O_SUSPEND_SECCOMP first, which the detach at the start clears.
 * The helper still has CAP_SYS_ADMIN here (credentials come after), which
 * is what installing a filter without no_new_privs needs.
 */
import {
  ptrace, SYS, PTRACE_O, PTRACE_O_TRACEFORK, PTRACE_O_TRACECLONE, PR, SECCOMP_MODE_STRICT, SECCOMP_SET_MODE_FILTER,
  SECCOMP_FILTER_FLAG_TSYNC, SOCK_FILTER_SIZE, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS,
} from '../sys/index.js';
import type { SeccompImage, ThreadImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { readTaskCreds } from '../proc/creds.js';
import { seccompSuspendObstacle } from '../freeze/seccomp-suspend.js';
import { TsnapError } from '../errors.js';

/** What restore's tracees are held with (create-process.ts, threads.ts), plus the suspension. */
const HELD = PTRACE_O.TRACESYSGOOD | PTRACE_O.EXITKILL | PTRACE_O_TRACEFORK | PTRACE_O_TRACECLONE | PTRACE_O.SUSPEND_SECCOMP;

type Filter = SeccompImage['filters'][number];

const sameFilter = (a: Filter, b: Filter): boolean => a.flags === b.flags && a.prog.equals(b.prog);

/** How many filters, from the oldest, every chain has in common. */
export function commonPrefix(chains: Filter[][]): number {
  if (chains.length === 0) return 0;
  let n = Math.min(...chains.map((c) => c.length));
  for (const c of chains.slice(1)) {
    let i = 0;
    while (i < n && sameFilter(c[i], chains[0][i])) i++;
    n = i;
  }
  return n;
}

export function hasSeccomp(threads: { image: ThreadImage }[]): boolean {
  return threads.some((th) => th.image.seccomp !== undefined);
}

/** Whether this tsnap can restore `images` (checked before anything is created). */
export function seccompRestoreObstacle(images: ThreadImage[]): string | null {
  if (!images.some((t) => t.seccomp)) return null;
  const why = seccompSuspendObstacle();
  return why ? `the image has seccomp filters and ${why}, which installing them needs` : null;
}

export function installSeccomp(leader: RemoteTask, threads: { rt: RemoteTask; image: ThreadImage }[]): void {
  if (!hasSeccomp(threads)) return;
  for (const th of threads) ptrace.setOptions(th.rt.pid, HELD);
  const chains = threads.map((th) => th.image.seccomp?.filters ?? []);
  // TSYNC needs every other thread's filters to be ancestors of the caller's: true of none.
  const shared = threads.length > 1 ? commonPrefix(chains) : 0;
  for (let i = 0; i < shared; i++) install(leader, chains[0][i], SECCOMP_FILTER_FLAG_TSYNC);
  threads.forEach((th, t) => { for (const f of chains[t].slice(shared)) install(th.rt, f, 0); });
  for (const th of threads) {
    if (th.image.seccomp?.mode === SECCOMP_MODE_STRICT) th.rt.sc.check('prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT)', SYS.prctl, PR.SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0);
  }
  for (const [t, th] of threads.entries()) verify(th.rt, leader.pid, th.image.seccomp, chains[t].length);
}

function install(rt: RemoteTask, f: Filter, extra: number): void {
  const insns = f.prog.length / SOCK_FILTER_SIZE;
  const fprog = Buffer.alloc(16);
  fprog.writeUInt16LE(insns, 0);
  const what = `seccomp(SET_MODE_FILTER, ${insns} instructions)`;
  if (16 + f.prog.length <= rt.scratchSize) {
    fprog.writeBigUInt64LE(BigInt(rt.scratch + 16), 8);
    rt.put(fprog, 0);
    rt.put(f.prog, 16);
    rt.sc.check(what, SYS.seccomp, SECCOMP_SET_MODE_FILTER, f.flags | extra, rt.scratch);
    return;
  }
  // Longer than the stub's scratch page: a mapping of its own, gone before the check reads the maps.
  const size = Math.ceil((16 + f.prog.length) / 4096) * 4096;
  const at = Number(rt.sc.check('mmap(seccomp filter)', SYS.mmap, 0, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  try {
    fprog.writeBigUInt64LE(BigInt(at + 16), 8);
    rt.mem.write(fprog, 0, 16, at);
    rt.mem.write(f.prog, 0, f.prog.length, at + 16);
    rt.sc.check(what, SYS.seccomp, SECCOMP_SET_MODE_FILTER, f.flags | extra, at);
  } finally {
    rt.sc.check('munmap(seccomp filter)', SYS.munmap, at, size);
  }
}

/** The kernel's count, read back: "exactly" is checked, not assumed. */
function verify(rt: RemoteTask, tgid: number, want: SeccompImage | undefined, filters: number): void {
  const got = readTaskCreds(tgid, rt.pid);
  const mode = want?.mode ?? 0;
  if (got.seccomp !== mode || got.seccompFilters !== filters) {
    throw new TsnapError('restoreFailed', `thread ${rt.pid} got seccomp mode ${got.seccomp} with ${got.seccompFilters} filter(s) instead of mode ${mode} with ${filters}`);
  }
}

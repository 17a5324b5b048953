/**
 * `tsnap check`: tries, on this machine and with these privileges, every
 * kernel interface tsnap depends on, and says what a failure disables.
 * Each probe really performs the operation (on tsnap itself, on a `sleep`
 * it starts, or on a restore helper's clone), it does not guess from
 * version numbers.
 */
import { spawn } from 'node:child_process';
import { closeSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import {
  Pagemap, PAGE_IS, VmCopier, SYS, rawSyscall, pidfdOpen, pidfdGetfd, unixPeerInode, SysError, kill,
  PR, PRCTL_MM_MAP_SIZE, O_CLOEXEC, O_NONBLOCK, UFFD_FEATURE, UFFD_USER_MODE_ONLY,
} from '../sys/index.js';
import { uffdApi } from '../track/uffd.js';
import { FrozenProcess, reapTraced } from '../freeze/frozen-process.js';
import { readMaps, readStat, readAuxvRaw } from '../proc/index.js';
import { createProcess } from '../restore/create-process.js';
import { SPECIAL_MAPPINGS } from '../restore/layout-plan.js';
import { PAGE_SIZE } from '../sys/uapi.js';

export interface CheckItem {
  feature: string;
  ok: boolean;
  /** What was found, or why it failed. */
  detail: string;
  /** What tsnap cannot do without it. */
  disables: string;
  /** Without it tsnap cannot dump or restore at all. */
  required: boolean;
}

export interface CheckResult {
  kernel: string;
  ok: boolean;
  items: CheckItem[];
}

const CAPS: [number, string][] = [[19, 'CAP_SYS_PTRACE'], [21, 'CAP_SYS_ADMIN'], [40, 'CAP_CHECKPOINT_RESTORE'], [12, 'CAP_NET_ADMIN'], [24, 'CAP_SYS_RESOURCE'], [6, 'CAP_SETGID'], [7, 'CAP_SETUID'], [8, 'CAP_SETPCAP']];

function capabilities(): Set<string> {
  const m = /^CapEff:\s*([0-9a-f]+)/m.exec(readFileSync('/proc/self/status', 'utf8'));
  const eff = m ? BigInt(`0x${m[1]}`) : 0n;
  return new Set(CAPS.filter(([bit]) => (eff >> BigInt(bit)) & 1n).map(([, n]) => n));
}

function errText(err: unknown): string {
  return err instanceof SysError ? err.code : (err as Error)?.message ?? String(err);
}

async function probe(items: CheckItem[], feature: string, required: boolean, disables: string, fn: () => string | Promise<string>): Promise<boolean> {
  try {
    items.push({ feature, ok: true, detail: await fn(), disables, required });
    return true;
  } catch (err) {
    items.push({ feature, ok: false, detail: errText(err), disables, required });
    return false;
  }
}

/** A `sleep` that is not our child (so nothing in Node waits for it but us). */
async function startSleeper(): Promise<number> {
  const sh = spawn('sh', ['-c', 'sleep 30 >/dev/null 2>&1 </dev/null & echo $!'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  sh.stdout!.on('data', (d) => { out += d; });
  await new Promise((r) => sh.on('close', r));
  const pid = Number(out.trim());
  if (!pid) throw new Error('could not start sleep');
  return pid;
}

export async function check(): Promise<CheckResult> {
  const items: CheckItem[] = [];
  const kernel = release();
  const [maj, min] = kernel.split('.').map(Number);
  items.push({ feature: 'kernel 6.7+', ok: maj > 6 || (maj === 6 && min >= 7), detail: kernel, disables: 'PAGEMAP_SCAN (all dumps)', required: true });
  const caps = capabilities();
  const setidCaps = ['CAP_SETUID', 'CAP_SETGID', 'CAP_SETPCAP'];
  items.push({ feature: 'privileges', ok: caps.has('CAP_SYS_PTRACE') && (caps.has('CAP_CHECKPOINT_RESTORE') || caps.has('CAP_SYS_ADMIN')),
    detail: [...caps].filter((c) => !setidCaps.includes(c)).join(' ') || 'none', disables: 'dump (ptrace) and restore (set_tid, PR_SET_MM_MAP)', required: true });
  items.push({ feature: 'CAP_NET_ADMIN', ok: caps.has('CAP_NET_ADMIN'), detail: caps.has('CAP_NET_ADMIN') ? 'present' : 'missing', disables: 'dump --tcp-established (TCP repair mode)', required: false });
  const setid = setidCaps.filter((c) => !caps.has(c));
  items.push({ feature: 'credentials', ok: setid.length === 0, detail: setid.length ? `missing ${setid.join(' ')}` : 'CAP_SETUID CAP_SETGID CAP_SETPCAP', disables: 'dump and restore of processes whose credentials differ from tsnap\'s (other users, reduced capabilities)', required: false });
  items.push({ feature: 'CAP_SYS_RESOURCE', ok: caps.has('CAP_SYS_RESOURCE'), detail: caps.has('CAP_SYS_RESOURCE') ? 'present' : 'missing', disables: 'restoring hard rlimits above tsnap\'s own (restore warns and keeps them)', required: false });

  await probe(items, 'PAGEMAP_SCAN', true, 'every dump (memory selection) and incremental tracking', () => {
    const pm = new Pagemap(process.pid);
    try {
      let n = 0;
      const mask = PAGE_IS.WPALLOWED | PAGE_IS.WRITTEN | PAGE_IS.PRESENT | PAGE_IS.SWAPPED | PAGE_IS.FILE | PAGE_IS.PFNZERO;
      const heap = readMaps(process.pid).find((v) => v.path === '[heap]') ?? readMaps(process.pid)[0];
      for (const batch of pm.scan({ start: heap.start, end: heap.end, categoryAnyof: mask, returnMask: mask })) n += batch.length;
      return `categories WPALLOWED WRITTEN PRESENT SWAPPED FILE PFNZERO accepted (${n} regions in [heap])`;
    } finally {
      pm.close();
    }
  });

  await probe(items, 'userfaultfd WP_ASYNC', false, 'pre-dump, dump --parent, migrate (incremental tracking)', () => {
    const fd = rawSyscall('userfaultfd', SYS.userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    try {
      uffdApi(fd, UFFD_FEATURE.WP_ASYNC | UFFD_FEATURE.WP_UNPOPULATED);
      return 'UFFDIO_API with WP_ASYNC and WP_UNPOPULATED';
    } finally {
      closeSync(fd);
    }
  });

  let sleeper = 0;
  try {
    sleeper = await startSleeper();
    const target = sleeper;
    await probe(items, 'ptrace seize/interrupt', true, 'dump (freezing the target)', () => {
      const fp = FrozenProcess.freeze(target);
      fp.release();
      return `froze and released a test process in ${(fp.freezeUs / 1000).toFixed(2)} ms`;
    });
    await probe(items, 'process_vm_readv', true, 'dump (copying memory)', () => {
      const stack = readMaps(target).find((v) => v.path === '[stack]')!;
      const buf = Buffer.alloc(PAGE_SIZE);
      const n = new VmCopier(target).readv(buf, 0, [{ addr: stack.end - PAGE_SIZE, len: PAGE_SIZE }]);
      return `read ${n} bytes of a test process`;
    });
    await probe(items, 'pidfd_getfd', true, 'dump of pipes and sockets, incremental tracking', () => {
      const pidfd = pidfdOpen(target);
      try {
        closeSync(pidfdGetfd(pidfd, 0));
        return 'took a copy of a test process\'s fd';
      } finally {
        closeSync(pidfd);
      }
    });
  } finally {
    if (sleeper) { try { kill(sleeper, 9); } catch { /* gone */ } }
  }

  await probe(items, 'sock_diag (unix)', false, 'dump of unix socket pairs', () => {
    try {
      unixPeerInode(1);
    } catch (err) {
      if (err instanceof SysError && err.code === 'ENOENT') return 'answers';
      throw err;
    }
    return 'answers';
  });

  await probe(items, 'POSIX timer ids', false, 'restore of processes with POSIX timers (timer_create)', () => {
    const on = rawSyscall('prctl(PR_TIMER_CREATE_RESTORE_IDS)', SYS.prctl, 77, 2, 0, 0, 0);
    return `PR_TIMER_CREATE_RESTORE_IDS answers (${on ? 'on' : 'off'})`;
  });

  await probe(items, 'vdso layout', true, 'restore (the vdso is moved to its dumped address)', () => {
    const maps = readMaps(process.pid);
    const found = SPECIAL_MAPPINGS.map((n) => maps.find((v) => v.path === `[${n}]`)).filter((v) => v);
    if (!maps.some((v) => v.path === '[vdso]')) throw new Error('no [vdso] mapping');
    return found.map((v) => `${v!.path} ${(v!.end - v!.start) / PAGE_SIZE}p`).join(', ');
  });

  // clone3 with set_tid and PR_SET_MM_MAP, in a restore helper's clone.
  await probe(items, 'clone3 set_tid', true, 'restore with the original pid (--new-pid still works)', async () => {
    const free = freePid();
    const { proc, helper } = await createProcess(free, 'ignore');
    try {
      if (proc.pid !== free) throw new Error(`got pid ${proc.pid}, asked for ${free}`);
      await probe(items, 'PR_SET_MM_MAP', true, 'restore (cmdline, environ, auxv, brk of the restored process)', () => {
        const st = readStat(proc.pid);
        const auxv = readAuxvRaw(proc.pid);
        const brk = Number(proc.sc.call(SYS.brk, 0));
        return proc.sc.withScratch(4096, (at) => {
          const map = Buffer.alloc(PRCTL_MM_MAP_SIZE);
          [st.startCode, st.endCode, st.startData, st.endData, st.startBrk, brk, st.startStack, st.argStart, st.argEnd, st.envStart, st.envEnd]
            .forEach((v, i) => map.writeBigUInt64LE(BigInt(v), i * 8));
          map.writeBigUInt64LE(BigInt(at + 1024), 88);
          map.writeUInt32LE(auxv.length, 96);
          map.writeInt32LE(-1, 100); // keep the executable
          proc.mem.write(auxv, 0, auxv.length, at + 1024);
          proc.mem.write(map, 0, map.length, at);
          proc.sc.check('prctl(PR_SET_MM_MAP)', SYS.prctl, PR.SET_MM, PR.PR_SET_MM_MAP, at, PRCTL_MM_MAP_SIZE, 0);
          return 'set the mm fields of a test process';
        });
      });
      return `created a process with pid ${free}`;
    } finally {
      try { kill(proc.pid, 9); } catch { /* gone */ }
      reapTraced(proc.pid);
      proc.mem.close();
      helper.kill('SIGKILL');
    }
  });
  if (!items.some((i) => i.feature === 'PR_SET_MM_MAP')) {
    items.push({ feature: 'PR_SET_MM_MAP', ok: false, detail: 'not tried: no test process', disables: 'restore', required: true });
  }
  // The PR_SET_MM_MAP probe runs inside the clone3 one: list them in that order.
  const c = items.findIndex((i) => i.feature === 'clone3 set_tid');
  const m = items.findIndex((i) => i.feature === 'PR_SET_MM_MAP');
  if (c > m && m >= 0) items.splice(m, 0, ...items.splice(c, 1));
  return { kernel, ok: items.every((i) => i.ok || !i.required), items };
}

function freePid(): number {
  const max = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  for (let i = 0; i < 1000; i++) {
    const pid = Math.floor(max / 2 + Math.random() * (max / 2 - 1));
    try { readStat(pid); } catch { return pid; }
  }
  throw new Error('no free pid found');
}

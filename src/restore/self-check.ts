/**
 * Restore checks its own work: once a process is rebuilt, and before it
 * runs, what the kernel shows of it (/proc) is compared with the image, and
 * every difference is named. A restore that silently came back different
 * becomes one that says so (restore warns; --strict-check refuses to start
 * the process).
 *
 * What is compared: the memory map (address, size, protection, sharing,
 * file offset, path; adjacent areas the kernel merges are joined on both
 * sides), the VmFlags restore sets, guard regions, each fd's number, open flags and file
 * position, each thread's blocked signals, the thread count, umask, ids,
 * process group and session, cwd, root, executable, comm, resource limits
 * and personality, the number of files in flight in each unix socket;
 * sockets' filters and shutdown state, and how unix ones are connected and
 * named (files/socket-state.ts); the controlling terminal (tty_nr), its
 * foreground group and the pts index and state of every pty fd
 * (files/tty.ts).
 */
import { mark } from '../trace.js';
import { closeSync, readlinkSync, readFileSync } from 'node:fs';
import { pidfdOpen, pidfdGetfd, fileOwner, Pagemap, scanKnowsGuard } from '../sys/index.js';
import { scanGuards, imageGuards, type GuardsRead } from '../dump/guards.js';
import { readMaps, readStatus, readStat, readComm, readFdInfo, listFds, readLimits, readVmFlagMasks, type Vma, type VmFlagsTable } from '../proc/index.js';
import { VMA_RESTORED_FLAGS, type ProcessImage, type VmaImage } from '../../formats/schema.js';
import { isInheritedStdio } from './fds.js';
import { readVmFlagMasksBpf, unusable as bpfUnusable } from '../proc/vmflags-bpf.js';
import { checkRestoredTtys, imagePtys } from '../files/tty.js';
import { DEAD_PROC_DIR } from '../proc/links.js';
import { checkInflightRestored } from '../files/scm-rights.js';
import { pidfdDiff } from '../files/pidfd.js';
import { readTimers } from '../proc/timers.js';
import { epollDiff } from '../files/epoll.js';
import { inotifyDiff } from '../files/inotify.js';
import { symlinkDiff } from '../files/symlink.js';
import { nsfsDiff } from '../files/nsfs.js';
import { checkPipeEnd } from '../files/pipe.js';
import { checkFifoGhost } from '../files/fifo-ghost.js';
import { checkSockets } from '../files/socket-state.js';
import { checkRestoredTcp } from '../files/tcp-check.js';

/** O_LARGEFILE: added by the kernel on 64-bit, whatever the program asked. */
const O_LARGEFILE = 0o100000;
/** __O_TMPFILE | O_DIRECTORY. */
const O_TMPFILE = 0o20200000;
const MAX_MAP_LINES = 3;

export interface CheckedThread {
  /** The tid the thread has now. */
  tid: number;
  sigmask: bigint;
}

export interface CheckOptions {
  /** Processes got new pids: ids of groups and sessions are mapped, not compared. */
  newPid: boolean;
  /** The tids now, with what each thread's image says. */
  threads: CheckedThread[];
  /** A dumped pid or tid as it is now (differs with --new-pid). */
  idNow?: (id: number) => number;
  /** The pts indexes of the whole image's ptys (a tree's may be in another process); default: this process's. */
  ptys?: Set<number>;
  /** VmFlags already read and proven current (migrate/live-vmflags.ts); absent or null: smaps is read here. */
  vmFlags?: Map<number, string[]> | null;
  /** Guard pages already read and proven current (migrate/live-vmflags.ts); absent or null: scanned here. */
  guards?: GuardsRead | null;
}

type Area = { start: number; end: number; prot: number; shared: boolean; offset: number; path: string };

/** What compareMaps reads of an area, image or live. */
type Mapped = { start: number; end: number; prot: number; shared: boolean; path: string };

/**
 * Adjacent areas that differ only in a boundary are one area: the kernel
 * merges re-created ones at will. The index just past the joined area that
 * starts at list[i]; `offset` is an area's file offset (0 when it has no file).
 * Nothing is allocated: 10 000 areas a side.
 */
function joinedEnd<T extends Mapped>(list: readonly T[], i: number, offset: (v: T) => number): number {
  const first = list[i];
  const off = offset(first);
  let end = first.end;
  let j = i + 1;
  for (; j < list.length; j++) {
    const v = list[j];
    if (v.start !== end || v.prot !== first.prot || v.shared !== first.shared || v.path !== first.path) break;
    if (!(v.path === '' || v.path.startsWith('[') || off + (end - first.start) === offset(v))) break;
    end = v.end;
  }
  return j;
}

const imageOffset = (v: VmaImage) => (v.file ? v.pgoff : 0);
const liveOffset = (v: Vma) => (v.inode !== 0 ? v.offset : 0);
/** The joined area list[i..j) as show() prints it. */
const area = (list: readonly Mapped[], i: number, j: number): Area => ({ ...list[i], end: list[j - 1].end, offset: 0 });
const show = (a: Area) => `${a.start.toString(16)}-${a.end.toString(16)} ${'rwx'.split('').map((c, i) => (a.prot & (1 << i) ? c : '-')).join('')}${a.shared ? 's' : 'p'} ${a.path}`;

function compareMaps(p: ProcessImage, live: Vma[], out: string[]): void {
  const want = p.mm.vmas;
  // Both sorted by address, starts unique: one walk side by side, text only for differences.
  const missing: Area[] = [];
  const extra: Area[] = [];
  let i = 0;
  let j = 0;
  while (i < want.length || j < live.length) {
    const ie = i < want.length ? joinedEnd(want, i, imageOffset) : i;
    const je = j < live.length ? joinedEnd(live, j, liveOffset) : j;
    const w = i < want.length ? want[i] : undefined;
    const h = j < live.length ? live[j] : undefined;
    // Equal as show() prints them (the offset only decides what joins).
    if (w && h && w.start === h.start && want[ie - 1].end === live[je - 1].end && w.prot === h.prot && w.shared === h.shared && w.path === h.path) { i = ie; j = je; continue; }
    if (h === undefined || (w !== undefined && w.start <= h.start)) {
      missing.push(area(want, i, ie));
      if (h && w!.start === h.start) { extra.push(area(live, j, je)); j = je; }
      i = ie;
      continue;
    }
    extra.push(area(live, j, je));
    j = je;
  }
  for (const a of missing.slice(0, MAX_MAP_LINES)) out.push(`memory: the image maps ${show(a)}, the process does not`);
  for (const a of extra.slice(0, MAX_MAP_LINES)) out.push(`memory: the process maps ${show(a)}, the image does not`);
  const more = missing.length + extra.length - Math.min(missing.length, MAX_MAP_LINES) - Math.min(extra.length, MAX_MAP_LINES);
  if (more > 0) out.push(`memory: ${more} more differences in the memory map`);
}

/** smaps walks page tables: read it only when the image has flags to compare. */
const hasVmFlags = (p: ProcessImage) => p.mm.vmas.some((v) => v.flags && v.flags.length > 0);

/** The tokens compared, as bits of a mask (readVmFlagMasks). */
const RESTORED_TOKENS = Object.keys(VMA_RESTORED_FLAGS);
const RESTORED_BIT = new Map(RESTORED_TOKENS.map((t, i) => [t, i]));
/** An image token restore does not set (a newer tsnap's image): never equal to what smaps shows. */
const FOREIGN = -1;

function imageMask(flags: readonly string[]): number {
  let m = 0;
  for (const t of flags) {
    const b = RESTORED_BIT.get(t);
    if (b === undefined) return FOREIGN;
    m |= 1 << b;
  }
  return m;
}

const maskTokens = (m: number) => RESTORED_TOKENS.filter((_, i) => m & (1 << i)).sort().join(' ');

/**
 * Compares each flagged image area's VmFlags with those of the live area
 * that holds its start (the kernel may have merged a re-created area into
 * the one before it). `flagsOf(start)`: the restored tokens of the live
 * area starting there, as a mask. Image areas and live ones are both sorted
 * by address: one walk; text only for differences.
 */
function compareVmFlags(p: ProcessImage, areas: readonly Vma[], flagsOf: (start: number) => number, out: string[]): void {
  let k = 0;
  for (const v of p.mm.vmas) {
    if (!v.flags) continue;
    while (k < areas.length && areas[k].end <= v.start) k++;
    const held = k < areas.length && areas[k].start <= v.start ? areas[k].start : v.start;
    const have = flagsOf(held);
    const want = imageMask(v.flags);
    if (have !== want) out.push(`memory: VmFlags of ${v.start.toString(16)} are [${maskTokens(have)}], the image's [${[...v.flags].sort().join(' ')}]`);
  }
}

/**
 * From this many areas on, VmFlags are read by the BPF iterator (proc/vmflags-bpf.ts) where it
 * works: the same table as smaps gives, for a one-time ~20-50 ms (the kernel's BTF read, the
 * program's verification, the bits learnt) that smaps of ~2 000 areas costs anyway.
 * TSNAP_VMFLAGS_BPF=1: the iterator whatever the count; 0: smaps always.
 */
const BPF_MIN_AREAS = 2000;

function readLiveVmFlags(pid: number, areas: number): VmFlagsTable {
  const mode = process.env.TSNAP_VMFLAGS_BPF;
  if (mode === '1' || (mode !== '0' && areas >= BPF_MIN_AREAS)) {
    const t = readVmFlagMasksBpf(pid, RESTORED_TOKENS, areas);
    if (t) return t;
    mark(`check: VmFlags from smaps, not the BPF iterator (${bpfUnusable || 'it could not read the process'})`);
  }
  return readVmFlagMasks(pid, RESTORED_TOKENS, areas);
}

/** flagsOf over a table read from smaps (address order): asked in address order, so one walk. */
function tableLookup(t: VmFlagsTable): (start: number) => number {
  let i = 0;
  return (start) => {
    if (i > 0 && t.starts[i - 1] > start) i = 0;
    while (i < t.count && t.starts[i] < start) i++;
    return i < t.count && t.starts[i] === start ? t.masks[i] : 0;
  };
}

/** The live areas holding flagged image areas all have an entry in `early`. */
function coversHolders(p: ProcessImage, areas: readonly Vma[], early: ReadonlyMap<number, string[]>): boolean {
  let k = 0;
  for (const v of p.mm.vmas) {
    if (!v.flags) continue;
    while (k < areas.length && areas[k].end <= v.start) k++;
    if (!early.has(k < areas.length && areas[k].start <= v.start ? areas[k].start : v.start)) return false;
  }
  return true;
}

/** Guard regions are page-table state: only a pagemap scan shows them. */
function compareGuards(p: ProcessImage, pid: number, early: GuardsRead | null, out: string[]): void {
  const want = imageGuards(p.mm.vmas);
  if (!want.length && !scanKnowsGuard()) return;
  const pm = new Pagemap(pid);
  let have: [number, number][];
  try { have = scanGuards(pm, p.mm.vmas, early); } finally { pm.close(); }
  const show = (l: [number, number][]) => l.map(([s, e]) => `${s.toString(16)}-${e.toString(16)}`).join(' ') || 'none';
  if (show(have) !== show(want)) out.push(`memory: guard regions are ${show(have)}, the image's ${show(want)}`);
}

function compareFds(p: ProcessImage, pid: number, idNow: (id: number) => number, out: string[]): void {
  const live = new Set(listFds(pid));
  const pidfd = pidfdOpen(pid);
  try {
    for (const f of p.fds) {
      if (!live.has(f.fd) || isInheritedStdio(f) || f.flags & 0o10000000 /* O_PATH: no owner */) continue;
      const copy = pidfdGetfd(pidfd, f.fd);
      try {
        const pipeDiff = checkPipeEnd(copy, f);
        if (pipeDiff) out.push(pipeDiff);
        const have = fileOwner(copy);
        const want = f.owner ?? { type: have.type, pid: 0, signal: 0 };
        if (have.pid !== (want.pid === 0 ? 0 : idNow(want.pid)) || have.signal !== want.signal || (want.pid !== 0 && have.type !== want.type)) {
          out.push(`fd ${f.fd} (${f.link}): owner ${have.type}:${have.pid} signal ${have.signal}, the image's ${want.type}:${want.pid} signal ${want.signal}`);
        }
      } finally {
        closeSync(copy);
      }
    }
  } finally {
    closeSync(pidfd);
  }
  for (const f of p.fds) {
    if (!live.has(f.fd)) { out.push(`fd ${f.fd} (${f.link}) is not open`); continue; }
    live.delete(f.fd);
    if (isInheritedStdio(f)) continue; // restore's own stdio stands in for it
    const fifoDiff = checkFifoGhost(pid, f);
    if (fifoDiff) out.push(fifoDiff);
    const info = readFdInfo(pid, f.fd);
    // O_TMPFILE says how a file was made, not how it is open: it cannot be reopened so.
    const ignore = O_LARGEFILE | (f.kind === 'file' ? O_TMPFILE : 0);
    if ((info.flags & ~ignore) !== (f.flags & ~ignore)) {
      out.push(`fd ${f.fd} (${f.link}): open flags 0${(info.flags & ~ignore).toString(8)}, the image's 0${(f.flags & ~ignore).toString(8)}`);
    }
    for (const d of [pidfdDiff(f, info, idNow), epollDiff(f, info), inotifyDiff(f, info), symlinkDiff(pid, f), nsfsDiff(pid, f)]) if (d) out.push(d);
    if (f.kind === 'file' && info.pos !== f.pos) out.push(`fd ${f.fd} (${f.link}): position ${info.pos}, the image's ${f.pos}`);
  }
  for (const fd of live) out.push(`fd ${fd} is open but not in the image`);
}

function link(pid: number, what: string): string {
  try { return readlinkSync(`/proc/${pid}/${what}`); } catch { return '?'; }
}

function compareProcess(p: ProcessImage, pid: number, opts: CheckOptions, out: string[]): void {
  const status = readStatus(pid);
  const stat = readStat(pid);
  const same = (what: string, have: unknown, want: unknown) => {
    if (String(have) !== String(want)) out.push(`${what} is ${String(have)}, the image's ${String(want)}`);
  };
  same('umask', `0${status.umask.toString(8)}`, `0${p.umask.toString(8)}`);
  same('uids (real, effective, saved, fs)', status.uid.join(' '), p.creds.uid.join(' '));
  same('gids (real, effective, saved, fs)', status.gid.join(' '), p.creds.gid.join(' '));
  same('thread count', status.threads, p.threads.length);
  if (!opts.newPid) {
    // A group or session whose leader is not restored cannot be joined again:
    // the process is in restore's own (as with CRIU's --shell-job).
    const outside = (id: number) => (id !== p.pid ? ' (its leader is not in the image: the process is in tsnap restore\'s)' : '');
    if (stat.pgrp !== p.pgid) out.push(`process group is ${stat.pgrp}, the image's ${p.pgid}${outside(p.pgid)}`);
    if (stat.session !== p.sid) out.push(`session is ${stat.session}, the image's ${p.sid}${outside(p.sid)}`);
  }
  // A dead /proc directory comes back as another dead process's (state/task-state.restore.ts).
  if (!(DEAD_PROC_DIR.test(p.cwd) && DEAD_PROC_DIR.test(link(pid, 'cwd')))) same('cwd', link(pid, 'cwd'), p.cwd);
  same('root', link(pid, 'root'), p.root);
  same('executable', link(pid, 'exe'), p.exe.path);
  same('comm', readComm(pid), p.comm);
  if (p.loginuid !== undefined) same('loginuid', readFileSync(`/proc/${pid}/loginuid`, 'utf8').trim(), p.loginuid);
  if (p.oomScoreAdj !== undefined) same('oom_score_adj', Number(readFileSync(`/proc/${pid}/oom_score_adj`, 'utf8').trim()), p.oomScoreAdj);
  same('personality', parseInt(readFileSync(`/proc/${pid}/personality`, 'utf8'), 16), p.personality);
  // Actions: an ignored forced signal is reset by the kernel, and a helper's spawn can leave one ignored.
  let ign = 0n;
  let cgt = 0n;
  for (const a of p.signals.actions) {
    const bit = 1n << BigInt(a.signo - 1);
    if (a.handler === 1n) ign |= bit;
    else if (a.handler !== 0n) cgt |= bit;
  }
  if (status.sigIgn !== ign) out.push(`ignored signals 0x${status.sigIgn.toString(16)}, the image's 0x${ign.toString(16)}`);
  if (status.sigCgt !== cgt) out.push(`caught signals 0x${status.sigCgt.toString(16)}, the image's 0x${cgt.toString(16)}`);
  for (const t of opts.threads) {
    const s = t.tid === pid ? status : readStatus(t.tid);
    if (s.sigBlk !== t.sigmask) out.push(`thread ${t.tid}: blocked signals 0x${s.sigBlk.toString(16)}, the image's 0x${t.sigmask.toString(16)}`);
  }
  const limits = readLimits(pid);
  for (const l of p.rlimits) {
    const have = limits.find((r) => r.resource === l.resource);
    // A hard limit below the image's is the one restore already warned of.
    if (!have || have.hard < l.max) continue;
    if (have.soft !== l.cur || have.hard !== l.max) out.push(`rlimit ${l.name}: ${have.soft}/${have.hard}, the image's ${l.cur}/${l.max}`);
  }
}

/** POSIX timers: ids, signals and whom they notify (a thread-directed one names the thread as restored). */
function compareTimers(p: ProcessImage, pid: number, idNow: (id: number) => number, out: string[]): void {
  const show = (t: { id: number; signo: number; notify: string; tid: number }, tid: number) => `${t.id}:${t.signo}:${t.notify}${t.notify === 'thread' ? `:${tid}` : ''}`;
  const have = readTimers(pid).map((t) => show(t, t.tid)).sort().join(' ');
  const want = (p.posixTimers ?? []).map((t) => show(t, idNow(t.tid))).sort().join(' ');
  if (have !== want) out.push(`POSIX timers are [${have}], the image's [${want}] (id:signal:notify)`);
}

/**
 * A difference of the memory map itself (areas, their protections, guard
 * regions), as checkRestored words it: a process that runs with one is not
 * the one dumped. A live build (migration) made its map from the sender's
 * LAYOUT frames, not from the image: such a difference there means the two
 * disagree, and the image is the one to trust.
 */
export function isMapDifference(d: string): boolean {
  return /memory: (the (image|process) maps |\d+ more differences in the memory map|guard regions are )/.test(d);
}

/** Every difference between the rebuilt process `pid` (not yet running) and its image, one line each. */
export function checkRestored(p: ProcessImage, pid: number, opts: CheckOptions): string[] {
  const out: string[] = [];
  const maps = checkAllBut(p, pid, opts, out);
  mark('check: all but VmFlags');
  if (hasVmFlags(p)) {
    const early = opts.vmFlags;
    // An early read lacks an area the stub's unmapping re-started (a stub merged with a neighbour): read again.
    if (early && coversHolders(p, maps, early)) {
      compareVmFlags(p, maps, (start) => imageMask((early.get(start) ?? []).filter((t) => RESTORED_BIT.has(t))), out);
    } else {
      compareVmFlags(p, maps, tableLookup(readLiveVmFlags(pid, maps.length)), out);
    }
  }
  mark('check: VmFlags');
  return out;
}

/** Every check but VmFlags; returns the live maps it read. */
function checkAllBut(p: ProcessImage, pid: number, opts: CheckOptions, out: string[]): Vma[] {
  const maps = readMaps(pid);
  compareMaps(p, maps, out);
  compareGuards(p, pid, opts.guards ?? null, out);
  mark('check: guards');
  compareFds(p, pid, opts.idNow ?? ((id) => id), out);
  mark('check: fds');
  checkInflightRestored(p.fds, (fd) => readFdInfo(pid, fd).extra, out);
  checkRestoredTcp(p.fds, pid, out);
  compareProcess(p, pid, opts, out);
  out.push(...checkRestoredTtys(p, pid, opts.idNow ?? ((id) => id), opts.ptys ?? imagePtys([p])));
  mark('check: process');
  compareTimers(p, pid, opts.idNow ?? ((id) => id), out);
  out.push(...checkSockets(p.fds.filter((f) => f.socket && !isInheritedStdio(f)), pid));
  return maps;
}

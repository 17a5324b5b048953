/**
 * The state of a frozen process that /proc tells from outside: identity,
 * memory layout, mm fields, limits, open files.
 */
import { readFileSync, statSync } from 'node:fs';
import { TsnapError } from '../errors.js';
import {
  readStat, readStatus, readMaps, readAuxvRaw, readCwd, readExe, readRoot, readComm, readPersonality,
  RLIMIT_NAMES, readLimits, type Vma,
} from '../proc/index.js';
import { readFds } from './fds.js';
import { describeCtty } from '../files/tty.js';
import { readMappedMemfds } from '../files/fifo-memfd.js';
import { describeSysvShm } from './sysv-shm.js';
import { readMappedGhosts } from '../files/ghost-map.js';
import { readAioRings } from '../files/aio.js';
import { VMA_RESTORED_FLAGS, type MappedGhostImage, type AioRingImage, type ProcessImage, type VmaImage, type RlimitImage, type FdImage, type FileIdentity, type MmImage } from '../../formats/schema.js';
import { readVmFlags } from '../proc/smaps.js';
import { specialOf, classifyVma, type VmaClass } from './memory-plan.js';
import type { RemoteState } from '../state/task-state.save.js';
import type { SocketOptions } from '../files/socket.js';

function identity(path: string): FileIdentity {
  const st = statSync(path);
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
}

export interface Layout {
  vmas: Vma[];
  classes: VmaClass[];
  images: VmaImage[];
}

/**
 * VMAs with the identity of each mapped file (stat through map_files, cached
 * per inode). `sharedElsewhere`: shared anonymous objects ("dev:ino") whose
 * pages another process of the same tree image stores (restore fills the
 * object from that one and maps it here): not stored again.
 */
export function readLayout(pid: number, sharedElsewhere?: ReadonlySet<string>, vmFlagsRead?: Map<number, string[]>): Layout {
  const vmas = readMaps(pid);
  // smaps costs a page-table walk per VMA, but only it shows madvise/mlock state.
  // `vmFlagsRead`: read frozen already, on another thread (proc/smaps-reader.ts).
  const vmFlags = vmFlagsRead ?? readVmFlags(pid);
  // MAP_DROPPABLE memory is the kernel's to drop at any time: a restore
  // brings it back empty, as after memory pressure (CRIU does the same).
  const classes = vmas.map((v): VmaClass => ((vmFlags.get(v.start) ?? []).includes('dp') ? 'notDumped' : classifyVma(v)));
  const cache = new Map<string, FileIdentity | null>();
  const hex = (n: number) => n.toString(16);
  const images = vmas.map((v, i): VmaImage => {
    let file: VmaImage['file'] = null;
    if (v.inode !== 0) {
      const key = `${v.devMajor}:${v.devMinor}:${v.inode}`;
      let id = cache.get(key);
      if (id === undefined) {
        try {
          // map_files reaches the mapped object even when its path was replaced or removed.
          id = identity(`/proc/${pid}/map_files/${hex(v.start)}-${hex(v.end)}`);
        } catch {
          try { id = identity(v.path); } catch { id = null; }
        }
        cache.set(key, id);
      }
      if (id) file = { ...id, devMajor: v.devMajor, devMinor: v.devMinor, deleted: v.deleted };
    }
    return {
      start: v.start, end: v.end, prot: v.prot, shared: v.shared,
      pgoff: v.inode !== 0 ? v.offset : 0,
      path: v.path, special: specialOf(v), file, dumped: classes[i] !== 'notDumped',
      flags: (vmFlags.get(v.start) ?? []).filter((t) => Object.hasOwn(VMA_RESTORED_FLAGS, t)),
    };
  });
  if (sharedElsewhere?.size) {
    images.forEach((im, i) => {
      if (classes[i] === 'sharedAnon' && im.file && sharedElsewhere.has(`${im.file.dev}:${im.file.ino}`)) {
        classes[i] = 'notDumped';
        im.dumped = false;
      }
    });
  }
  return { vmas, classes, images };
}

/**
 * From /proc/PID/limits, which anyone may read: prlimit64 on another user's
 * process needs CAP_SYS_RESOURCE, which root often lacks (containers, this
 * project's CI), and every non-root process would fail to dump.
 */
export function readOomScoreAdj(pid: number): number {
  return Number(readFileSync(`/proc/${pid}/oom_score_adj`, 'utf8').trim());
}

/**
 * A negative oom_score_adj (below the kernel's default floor, 0) can only be
 * set with CAP_SYS_RESOURCE, which root lacks on some machines: such a
 * value is refused before the freeze rather than lost at restore.
 */
export function checkOomScoreAdj(pid: number): void {
  const want = readOomScoreAdj(pid);
  if (want >= 0) return;
  const capEff = BigInt(`0x${/^CapEff:\s+([0-9a-f]+)/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]}`);
  if (capEff & (1n << 24n)) return;
  throw new TsnapError('unsupported', `process ${pid} has oom_score_adj ${want}; restore could not set a negative value without CAP_SYS_RESOURCE, which tsnap lacks here`);
}

export function readRlimits(pid: number): RlimitImage[] {
  const limits = readLimits(pid);
  return RLIMIT_NAMES.map((name, resource) => {
    const l = limits.find((x) => x.resource === resource);
    if (!l) throw new TsnapError('kernel', `/proc/${pid}/limits has no "${name}" row; this kernel prints limits tsnap does not know`);
    return { resource, name, cur: l.soft, max: l.hard };
  });
}

export function assembleProcess(pid: number, remote: RemoteState, layout: Layout, fds?: FdImage[], sockets: SocketOptions & { ghostLimit?: number } = {}): ProcessImage {
  const stat = readStat(pid);
  const status = readStatus(pid);
  const mm: MmImage = {
    startCode: stat.startCode, endCode: stat.endCode,
    startData: stat.startData, endData: stat.endData,
    startBrk: stat.startBrk, brk: remote.brk,
    startStack: stat.startStack,
    argStart: stat.argStart, argEnd: stat.argEnd,
    envStart: stat.envStart, envEnd: stat.envEnd,
    auxv: readAuxvRaw(pid),
    vmas: layout.images,
  };
  const exePath = readExe(pid);
  return {
    pid,
    ppid: stat.ppid,
    pgid: stat.pgrp,
    sid: stat.session,
    comm: readComm(pid),
    exe: { path: exePath, ...identity(`/proc/${pid}/exe`) },
    cwd: readCwd(pid),
    cwdFile: (({ dev, ino }) => ({ dev, ino }))(statSync(`/proc/${pid}/cwd`)),
    root: readRoot(pid),
    umask: status.umask,
    personality: readPersonality(pid),
    oomScoreAdj: readOomScoreAdj(pid),
    loginuid: Number(readFileSync(`/proc/${pid}/loginuid`, 'utf8').trim()),
    creds: { uid: status.uid, gid: status.gid },
    startTime: stat.startTime,
    rlimits: readRlimits(pid),
    threads: remote.threads,
    signals: remote.signals,
    mm,
    fds: fds ?? readFds(pid, { ...sockets, enter: true }),
    memfds: readMappedMemfds(pid, layout.vmas, (i) => layout.images[i].file),
    ...optional('sysvShm', describeSysvShm(pid, layout.vmas)),
    ...withMappedGhosts(readMappedGhosts(pid, layout.vmas, (i) => layout.images[i].file, sockets.ghostLimit)),
    ...withAioRings(readAioRings(pid, layout.vmas)),
    itimers: remote.itimers,
    posixTimers: remote.posixTimers,
    prctl: remote.prctl,
    ...(remote.groupStop ? { stopSignal: remote.groupStop } : {}),
    ...describeCtty(stat),
  };
}

/** `{ [k]: v }` when v is defined: optional image fields stay absent rather than undefined. */
function optional<K extends string, V>(k: K, v: V | undefined): { [P in K]?: V } {
  return (v === undefined ? {} : { [k]: v }) as { [P in K]?: V };
}

/** Absent when there are none: images without deleted mappings stay as before. */
function withMappedGhosts(list: MappedGhostImage[]): { mappedGhosts?: MappedGhostImage[] } {
  return list.length ? { mappedGhosts: list } : {};
}

function withAioRings(list: AioRingImage[]): { aioRings?: AioRingImage[] } {
  return list.length ? { aioRings: list } : {};
}

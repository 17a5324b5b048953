/**
 * SysV shared memory a process has attached (postgres keeps its interlock
 * segment this way). The segment is stored whole, once per process that
 * attaches it (segments are small in practice, and a tree member's image
 * stays self-contained); restore attaches the same segment again, by id.
 */
import { ProcMem, PAGE_SIZE } from '../sys/index.js';
import { readSysvShm, isSysvShmPath, type Vma, type SysvShmEntry } from '../proc/index.js';
import type { SysvShmImage } from '../../formats/schema.js';
import { TsnapError } from '../errors.js';

/** Larger segments are refused: their bytes go into the image's metadata. */
export const SYSV_SHM_MAX = 64 << 20;

export function isSysvShmVma(v: Vma): boolean {
  return v.shared && v.deleted && isSysvShmPath(v.path);
}

/** The segment behind a SysV VMA, or a refusal naming what restore could not attach again. */
function segmentOf(pid: number, v: Vma, all: SysvShmEntry[]): SysvShmEntry {
  const at = `0x${v.start.toString(16)}`;
  const seg = all.find((s) => s.shmid === v.inode);
  if (!seg) throw new TsnapError('unsupported', `process ${pid} maps SysV shm ${v.inode} at ${at}, which /proc/sysvipc/shm does not list (another IPC namespace?); restore could not attach it again`);
  if (seg.size > SYSV_SHM_MAX) throw new TsnapError('unsupported', `process ${pid} attaches SysV shm ${seg.shmid} of ${seg.size} bytes at ${at}; segments over ${SYSV_SHM_MAX >> 20} MiB are not stored in images`);
  const whole = Math.ceil(seg.size / PAGE_SIZE) * PAGE_SIZE;
  if (v.offset !== 0 || v.end - v.start !== whole) {
    throw new TsnapError('unsupported', `process ${pid} maps part of SysV shm ${seg.shmid} at ${at} (unmapped or remapped in part); restore attaches whole segments only`);
  }
  return seg;
}

/** Before the freeze: every SysV attachment is one restore can make again. */
export function checkSysvShm(pid: number, vmas: readonly Vma[]): void {
  const sysv = vmas.filter(isSysvShmVma);
  if (sysv.length === 0) return;
  const all = readSysvShm();
  for (const v of sysv) segmentOf(pid, v, all);
}

/** Frozen: each attached segment with its bytes, read through the process's own mapping. */
export function describeSysvShm(pid: number, vmas: readonly Vma[]): SysvShmImage[] | undefined {
  const sysv = vmas.filter(isSysvShmVma);
  if (sysv.length === 0) return undefined;
  const all = readSysvShm();
  const out = new Map<number, SysvShmImage>();
  const mem = new ProcMem(pid);
  try {
    for (const v of sysv) {
      const seg = segmentOf(pid, v, all);
      if (out.has(seg.shmid)) continue;
      const data = Buffer.alloc(seg.size);
      // /proc/PID/mem reaches a segment attached read-only or PROT_NONE as well.
      mem.read(data, 0, seg.size, v.start);
      out.set(seg.shmid, { shmid: seg.shmid, key: seg.key, size: seg.size, mode: seg.mode & 0o1777, uid: seg.uid, gid: seg.gid, data });
    }
  } finally {
    mem.close();
  }
  return [...out.values()];
}

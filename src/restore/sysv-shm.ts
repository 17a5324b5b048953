/**
 * SysV shm segments at restore. A segment is attached again by its id,
 * which the program may have recorded (postgres keeps it in
 * postmaster.pid). So restore either takes the same segment, when it still
 * exists unattached (the dump killed every process that had it), or makes
 * it again with that id and key (shm_next_id); it writes the bytes of the
 * dump into it, and each process attaches it at its old address. A segment
 * another process still has attached is refused: taking it would join two
 * programs' memory. Segments this restore made are removed if it fails.
 */
import { shmStat, shmCreate, shmSetOwner, shmRemove, shmWrite, SysError, Errno, SYS, PROT_WRITE, PROT_EXEC, SHM_RDONLY, SHM_EXEC, SHM_DEST, type ShmStat } from '../sys/index.js';
import { readSysvShm } from '../proc/index.js';
import type { SysvShmImage, VmaImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { TsnapError } from '../errors.js';

const hex = (key: number) => `0x${(key >>> 0).toString(16).padStart(8, '0')}`;

function statOrNull(id: number): ShmStat | null {
  try {
    return shmStat(id);
  } catch (err) {
    if (err instanceof SysError && (err.errno === Errno.EINVAL || err.errno === Errno.EIDRM)) return null;
    throw err;
  }
}

function removedAtDump(s: SysvShmImage): boolean {
  return (s.mode & SHM_DEST) !== 0;
}

/** Why segment `s` cannot be attached again here, or null. */
export function sysvShmObstacle(s: SysvShmImage): string | null {
  const what = `SysV shm ${s.shmid} (key ${hex(s.key)})`;
  const now = removedAtDump(s) ? null : statOrNull(s.shmid);
  if (now) {
    if (now.key !== s.key || now.size !== s.size) return `${what}: id ${s.shmid} is now another segment (key ${hex(now.key)}, ${now.size} bytes); remove it (ipcrm -m ${s.shmid}) to restore`;
    if (now.nattch > 0) return `${what} is attached by ${now.nattch} running processes (is the dumped program still running?); stop them to restore`;
    return null;
  }
  if (s.key !== 0) {
    const clash = readSysvShm().find((x) => x.key === s.key);
    if (clash) return `${what}: key ${hex(s.key)} now belongs to segment ${clash.shmid}; remove it (ipcrm -m ${clash.shmid}) to restore`;
  }
  return null;
}

export class SysvSegments {
  private readonly images = new Map<number, SysvShmImage>();
  /** Segments this restore made: removed if it fails. */
  private readonly made: number[] = [];

  constructor(all: readonly SysvShmImage[]) {
    for (const s of all) if (!this.images.has(s.shmid)) this.images.set(s.shmid, s);
  }

  /** Takes or makes every segment and puts the dump's bytes in it. */
  prepare(): void {
    for (const s of this.images.values()) {
      const obstacle = sysvShmObstacle(s);
      if (obstacle) throw new TsnapError('restoreFailed', obstacle);
      const reuse = !removedAtDump(s) && statOrNull(s.shmid) !== null;
      if (!reuse) {
        const id = shmCreate(removedAtDump(s) ? 0 : s.key, s.size, s.shmid);
        this.made.push(id);
        if (id !== s.shmid) {
          throw new TsnapError('restoreFailed', `SysV shm ${s.shmid} (key ${hex(s.key)}) could not get its id back (the kernel gave ${id}: its index is taken by another segment)`);
        }
      }
      shmWrite(s.shmid, s.data);
      shmSetOwner(s.shmid, s.uid, s.gid, s.mode);
    }
  }

  /** Attaches the segment of a SysV VMA in the process, at its address and with its access. */
  attach(rt: RemoteTask, v: VmaImage): void {
    const id = v.file!.ino;
    // Writable when it was, or could have been made so by mprotect (VM_MAYWRITE).
    const writable = (v.prot & PROT_WRITE) !== 0 || !!v.flags?.includes('mw');
    const flags = (writable ? 0 : SHM_RDONLY) | (v.prot & PROT_EXEC ? SHM_EXEC : 0);
    const got = Number(rt.sc.check(`shmat(${id}, 0x${v.start.toString(16)})`, SYS.shmat, id, v.start, flags));
    if (got !== v.start) throw new TsnapError('restoreFailed', `shmat of SysV shm ${id} landed at 0x${got.toString(16)}, not 0x${v.start.toString(16)}`);
    const given = 1 | (writable ? PROT_WRITE : 0) | (flags & SHM_EXEC ? PROT_EXEC : 0);
    if (given !== v.prot) rt.sc.check(`mprotect(0x${v.start.toString(16)})`, SYS.mprotect, v.start, v.end - v.start, v.prot);
  }

  /** Every process attached: segments removed at the dump are removed again (they live while attached). */
  finish(): void {
    for (const s of this.images.values()) if (removedAtDump(s)) shmRemove(s.shmid);
    this.made.length = 0;
  }

  /** A failed restore: the segments it made go. */
  abort(): void {
    for (const id of this.made) { try { shmRemove(id); } catch { /* gone */ } }
    this.made.length = 0;
  }
}

/** /proc/sysvipc/shm: the SysV shared memory segments of the IPC namespace. */
import { readFileSync } from 'node:fs';

export interface SysvShmEntry {
  key: number;
  shmid: number;
  /** Permission bits plus SHM_DEST (0o1000) and SHM_LOCKED (0o2000). */
  mode: number;
  size: number;
  nattch: number;
  uid: number;
  gid: number;
}

export function parseSysvShm(text: string): SysvShmEntry[] {
  const out: SysvShmEntry[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 11) continue;
    // key and shmid are decimal; perms is octal.
    out.push({ key: Number(f[0]), shmid: Number(f[1]), mode: parseInt(f[2], 8), size: Number(f[3]), nattch: Number(f[6]), uid: Number(f[7]), gid: Number(f[8]) });
  }
  return out;
}

export function readSysvShm(): SysvShmEntry[] {
  return parseSysvShm(readFileSync('/proc/sysvipc/shm', 'utf8'));
}

/** A SysV shm attachment shows in maps as /SYSV<key in hex> (deleted), its inode the shmid. */
export function isSysvShmPath(path: string): boolean {
  return /^\/SYSV[0-9a-f]{8}$/.test(path);
}

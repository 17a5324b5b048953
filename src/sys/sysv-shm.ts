/**
 * SysV shared memory from tsnap's own side: making a segment again with its
 * old id and key, filling it, handing it to its owner, removing it. The
 * restored process attaches it itself (a remote shmat), at its address.
 */
import { writeFileSync } from 'node:fs';
import { libc } from './libc.js';
import { rawSyscall } from './fd.js';
import { SysError } from './errors.js';
import { SYS } from './uapi.js';

export const IPC_PRIVATE = 0;
const IPC_CREAT = 0o1000;
const IPC_EXCL = 0o2000;
const IPC_RMID = 0;
const IPC_SET = 1;
const IPC_STAT = 2;
export const SHM_RDONLY = 0o10000;
export const SHM_EXEC = 0o100000;
/** Set in the mode /proc/sysvipc/shm shows once IPC_RMID was asked while attached. */
export const SHM_DEST = 0o1000;

/** struct shmid64_ds on x86-64: ipc64_perm (48 bytes), then size, times, pids, nattch. */
const SHMID_DS_SIZE = 112;

export interface ShmStat {
  key: number;
  uid: number;
  gid: number;
  mode: number;
  size: number;
  nattch: number;
}

export function shmStat(id: number): ShmStat {
  const b = Buffer.alloc(SHMID_DS_SIZE);
  rawSyscall(`shmctl(${id}, IPC_STAT)`, SYS.shmctl, id, IPC_STAT, libc.address(b));
  return {
    key: b.readInt32LE(0), uid: b.readUInt32LE(4), gid: b.readUInt32LE(8), mode: b.readUInt32LE(20),
    size: Number(b.readBigUInt64LE(48)), nattch: Number(b.readBigUInt64LE(88)),
  };
}

/**
 * A new segment. `id`: the id it should get (the kernel takes it from
 * shm_next_id when that index is free, another otherwise: the caller checks).
 */
export function shmCreate(key: number, size: number, id: number): number {
  writeFileSync('/proc/sys/kernel/shm_next_id', `${id}\n`);
  try {
    return rawSyscall(`shmget(0x${(key >>> 0).toString(16)}, ${size})`, SYS.shmget, key, size, IPC_CREAT | IPC_EXCL | 0o600);
  } finally {
    // shmget consumes shm_next_id only on success; never leave it armed.
    try { writeFileSync('/proc/sys/kernel/shm_next_id', '-1\n'); } catch { /* armed value is harmless once consumed */ }
  }
}

export function shmSetOwner(id: number, uid: number, gid: number, mode: number): void {
  const b = Buffer.alloc(SHMID_DS_SIZE);
  b.writeUInt32LE(uid, 4);
  b.writeUInt32LE(gid, 8);
  b.writeUInt32LE(mode & 0o777, 20);
  rawSyscall(`shmctl(${id}, IPC_SET)`, SYS.shmctl, id, IPC_SET, libc.address(b));
}

export function shmRemove(id: number): void {
  rawSyscall(`shmctl(${id}, IPC_RMID)`, SYS.shmctl, id, IPC_RMID, 0);
}

/** Writes `data` at the start of segment `id` through a short-lived attachment of tsnap's own. */
export function shmWrite(id: number, data: Buffer): void {
  const ptr = libc.shmat(id, null, 0);
  if (ptr === null || libc.address(ptr as Buffer) === 0xffffffffffffffffn) throw new SysError(`shmat(${id})`, libc.errno());
  try {
    data.copy(libc.view(ptr, data.length));
  } finally {
    libc.shmdt(ptr);
  }
}

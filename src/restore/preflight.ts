/**
 * Checks made before anything is created: a restore that cannot succeed
 * fails here, with the reason, and nothing to clean up.
 */
import { statSync, existsSync } from 'node:fs';
import { release } from 'node:os';
import type { Image } from '../image/image-reader.js';
import type { ProcessImage } from '../../formats/schema.js';
import { vmaKind, isSpecial } from './layout-plan.js';
import { checkFds } from './fds.js';
import { sysvShmObstacle } from './sysv-shm.js';
import { mappedGhostOf } from '../files/ghost-map.js';
import { checkAliases } from '../files/ghost.js';
import { isAioRing, checkAioRoom } from '../files/aio.js';
import { pidTaken } from './create-process.js';
import { TsnapError } from '../errors.js';
import { credsObstacle, helperCreds } from './creds-check.js';
import { seccompRestoreObstacle } from './seccomp.js';

export function preflight(img: Image, p: ProcessImage, newPid: boolean): void {
  const inv = img.inventory;
  if (inv.arch !== 'x86_64') throw new TsnapError('kernel', `image is for ${inv.arch}; this is x86_64`);
  if (inv.kernel !== release()) {
    throw new TsnapError('kernel', `image was made on kernel ${inv.kernel}, this is ${release()}; restore needs the same kernel (vdso layout)`);
  }
  if (p.threads[0]?.tid !== p.pid) throw new TsnapError('badImage', `image of process ${p.pid} does not start with its main thread`);
  if (!newPid) {
    // /proc/TID exists for threads too (unlisted): every tid must be free.
    for (const t of p.threads) if (existsSync(`/proc/${t.tid}`)) throw pidTaken(t.tid);
  }

  const seen = new Set<string>();
  const checkFile = (path: string, what: string, want: { ino: number; size: number; dev: number } | null, deleted: boolean) => {
    if (seen.has(path)) return;
    seen.add(path);
    if (deleted) throw new TsnapError('restoreFailed', `${what} ${path} was deleted before the dump; it cannot be mapped again`);
    let st;
    try {
      st = statSync(path);
    } catch {
      throw new TsnapError('restoreFailed', `${what} ${path} is missing; restore maps it again from the same file`);
    }
    if (want && (st.ino !== want.ino || st.size !== want.size || st.dev !== want.dev)) {
      throw new TsnapError('restoreFailed', `${what} ${path} changed since the dump (inode ${want.ino} size ${want.size} -> inode ${st.ino} size ${st.size}); the mapped contents would differ`);
    }
  };
  checkFile(p.exe.path, 'executable', p.exe, false);
  for (const v of p.mm.vmas) {
    if (isSpecial(v)) continue;
    const k = vmaKind(v);
    if (v.path.startsWith('/memfd:') && v.file) {
      const f = v.file;
      if (!p.memfds?.some((m) => m.dev === f.dev && m.ino === f.ino)) throw new TsnapError('badImage', `the image maps ${v.path} at 0x${v.start.toString(16)} but does not hold its contents`);
      continue;
    }
    if (k === 'sysvShm') continue; // the segment is checked below
    if (mappedGhostOf(p.mappedGhosts, v)) continue; // made again from the image (ghost-map.ts)
    if (isAioRing(v)) continue; // made by io_setup (aio.ts)
    if (k === 'privateFile' || k === 'sharedFile') checkFile(v.path, 'mapped file', v.file, v.file?.deleted ?? false);
  }
  for (const s of p.sysvShm ?? []) {
    const obstacle = sysvShmObstacle(s);
    if (obstacle) throw new TsnapError('restoreFailed', obstacle);
  }
  checkFds(p.fds);
  checkAioRoom(p.aioRings ?? []);
  checkAliases([
    ...p.fds.filter((f) => f.ghost?.alias && f.file).map((f) => ({ alias: f.ghost!.alias, ino: f.file!.ino, dev: f.file!.dev, what: `fd ${f.fd} (${f.path})` })),
    ...(p.mappedGhosts ?? []).map((g) => ({ alias: g.alias, ino: g.ino, dev: g.dev, what: `the mapped ${g.path}` })),
  ]);
  const start = helperCreds();
  for (const t of p.threads) {
    const obstacle = t.creds && credsObstacle(t.creds, start, 'tsnap');
    if (obstacle) throw new TsnapError('permission', `thread ${t.tid} of process ${p.pid} ${obstacle}; run tsnap restore with those privileges`);
  }
  const seccomp = seccompRestoreObstacle(p.threads);
  if (seccomp) throw new TsnapError('permission', `process ${p.pid}: ${seccomp}; run tsnap restore as root, outside any seccomp filter`);
}

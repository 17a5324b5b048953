/**
 * Namespace fds (open("/proc/self/ns/net"): the link reads "net:[4026531840]").
 * tsnap restores processes into its own namespaces, so an fd of the
 * process's own namespace is opened again from /proc/self/ns of the
 * restored process, when that is still the same namespace; an fd of any
 * other namespace is refused at dump.
 */
import { statSync } from 'node:fs';
import { O_CLOEXEC } from '../sys/index.js';
import type { FdImage } from '../../formats/schema.js';
import type { FdTarget } from '../proc/fds.js';
import type { RemoteTask } from '../inject/remote-task.js';
import { placeFds } from './place.js';
import { TsnapError } from '../errors.js';

const NS_LINK = /^(cgroup|ipc|mnt|net|pid|time|user|uts):\[(\d+)\]$/;

export function isNsfd(t: FdTarget): boolean {
  return t.path === null && NS_LINK.test(t.link);
}

function nsIno(pid: number | 'self', file: string): number | null {
  try { return statSync(`/proc/${pid}/ns/${file}`).ino; } catch { return null; }
}

/** Which /proc/PID/ns entry of the process is this namespace, or a refusal. */
export function describeNsfd(pid: number, img: FdImage, t: FdTarget): FdImage['nsfs'] {
  const type = NS_LINK.exec(t.link)![1];
  // pid and time have a second entry: the namespace the children get.
  const files = type === 'pid' || type === 'time' ? [type, `${type}_for_children`] : [type];
  const file = files.find((n) => nsIno(pid, n) === t.ino);
  if (!file) {
    throw new TsnapError('unsupported', `fd ${img.fd} of process ${pid} is a ${type} namespace (${t.link}) other than the process's own; tsnap restores fds of the process's own namespaces only`);
  }
  return { file, ino: t.ino };
}

/** Restore runs in tsnap's namespaces: the image's must be those. */
export function checkNsfdRestorable(f: FdImage): void {
  const have = nsIno('self', f.nsfs!.file);
  if (have !== f.nsfs!.ino) {
    throw new TsnapError('restoreFailed', `fd ${f.fd} is the namespace ${f.link}, and restore runs in another one (${f.nsfs!.file}:[${have}]); restore in the namespaces of the dump`);
  }
}

export function restoreNsfd(rt: RemoteTask, group: FdImage[], floor: number): void {
  const f = group[0];
  checkNsfdRestorable(f);
  const tmp = rt.open(`/proc/self/ns/${f.nsfs!.file}`, f.flags & ~O_CLOEXEC);
  placeFds(rt, [{ tmp, targets: group }], floor);
}

/** Restore's self-check: the restored fd is the image's namespace (null when it is). */
export function nsfsDiff(pid: number, f: FdImage): string | null {
  if (!f.nsfs) return null;
  let ino: number | null = null;
  try { ino = statSync(`/proc/${pid}/fd/${f.fd}`).ino; } catch { /* reported below */ }
  return ino === f.nsfs.ino ? null : `fd ${f.fd} is namespace ${f.nsfs.file}:[${ino}], the image's ${f.link}`;
}

/**
 * Putting a freshly created object's fds at the numbers the image wants.
 *
 * The kernel hands out the lowest free numbers, so a temporary fd may be
 * exactly a number another end of the same object must take (pipe2 gave
 * 5,6 but the read end must be 6). Such temporaries are first moved above
 * every number the image uses; then each is dup3'd to its targets (with the
 * target's close-on-exec bit) and closed unless it is one of them.
 */
import { SYS, O_CLOEXEC, F_DUPFD_CLOEXEC, F_SETFD, FD_CLOEXEC } from '../sys/index.js';
import type { FdImage } from '../../formats/schema.js';
import type { RemoteTask } from '../inject/remote-task.js';

export interface Placement {
  /** The temporary fd, as returned by the creating syscall. */
  tmp: number;
  /** Every image fd that is this open file (dups of it included). */
  targets: FdImage[];
}

export function placeFds(rt: RemoteTask, placements: Placement[], floor: number): void {
  const temps = placements.map((p) => p.tmp);
  placements.forEach((_, i) => {
    const others = new Set(placements.flatMap((q, j) => (j === i ? [] : q.targets.map((t) => t.fd))));
    if (others.has(temps[i])) {
      const moved = Number(rt.sc.check(`fcntl(${temps[i]}, F_DUPFD_CLOEXEC)`, SYS.fcntl, temps[i], F_DUPFD_CLOEXEC, floor));
      rt.close(temps[i]);
      temps[i] = moved;
    }
  });
  placements.forEach((p, i) => {
    const tmp = temps[i];
    let keep = false;
    for (const t of p.targets) {
      const cloexec = t.flags & O_CLOEXEC;
      if (t.fd === tmp) {
        keep = true;
        rt.sc.check(`fcntl(${t.fd}, F_SETFD)`, SYS.fcntl, t.fd, F_SETFD, cloexec ? FD_CLOEXEC : 0);
      } else {
        rt.sc.check(`dup3(${tmp}, ${t.fd})`, SYS.dup3, tmp, t.fd, cloexec);
      }
    }
    if (!keep) rt.close(tmp);
  });
}

/** Status flags (O_NONBLOCK, O_APPEND...) F_SETFL can set on an open file. */
export const SETFL_MASK = 0o2000 | 0o4000 | 0o20000 | 0o40000 | 0o1000000; // APPEND NONBLOCK ASYNC DIRECT NOATIME

/**
 * Places the two ends of a pipe or socket pair created in this process
 * (and `more` open files of those ends, each a description of its own).
 * An end this process does not have stays open above every target number
 * (`floor`), for another process of the tree to take with pidfd_getfd.
 * Returns where each end is in this process.
 */
export function placeEnds(rt: RemoteTask, a: Placement, b: Placement, floor: number, more: Placement[] = []): { a: number; b: number } {
  const carry = (fd: number) => {
    const hi = Number(rt.sc.check(`fcntl(${fd}, F_DUPFD_CLOEXEC)`, SYS.fcntl, fd, F_DUPFD_CLOEXEC, floor));
    rt.close(fd);
    return hi;
  };
  const at = { a: a.targets.length ? a.targets[0].fd : carry(a.tmp), b: b.targets.length ? b.targets[0].fd : carry(b.tmp) };
  placeFds(rt, [...[a, b].filter((e) => e.targets.length), ...more], floor);
  return at;
}

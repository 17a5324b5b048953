/**
 * What every kind of fd provides, dump side and restore side, in one
 * place. Each module of src/files exports one FdKindModule per kind it
 * handles and src/files/fd-kinds.ts lists them in a table keyed by every
 * FdKindImage: a kind added to the image format without both directions
 * does not compile.
 */
import type { FdImage } from '../../formats/schema.js';
import type { FdInfo, FdTarget } from '../proc/fds.js';
import type { RemoteTask } from '../inject/remote-task.js';
import type { SocketOptions } from './socket.js';
import type { PtyRestorer } from './tty.js';

/** What dump knows while describing one fd. */
export interface DescribeContext {
  pid: number;
  /** A pidfd of `pid` (pidfd_getfd of the fd gives tsnap its own copy). */
  pidfd: number;
  target: FdTarget;
  info: FdInfo;
  /** Every fd number open in the process. */
  open: Set<number>;
  opts: SocketOptions;
  /**
   * The process is frozen: contents (queued bytes, deleted files' data)
   * may be read. False for the check before the freeze, which needs the
   * kinds only and must fail fast.
   */
  frozen: boolean;
  /** Inodes of deleted files whose contents this dump already holds. */
  ghosts: Set<string>;
  /** Bytes of data a deleted file may hold to be stored (dump --ghost-limit; default GHOST_LIMIT). */
  ghostLimit?: number;
  /** Whose fd numbers an epoll names: `pid`, but for files in flight (read as tsnap's own fds) their receiver. */
  filesPid: number;
}

/** Dump's view of the whole set when it checks one fd. */
export interface DumpCheckContext {
  pid: number;
  /** Every pid of the dump (one, or the tree). */
  pids: number[];
  /** Exited children the tree image records (a pidfd may name one). */
  zombies: number[];
}

/** Restore's view while it recreates the fds of one process. */
export interface RestoreContext {
  rt: RemoteTask;
  /** Every fd of the process (files in flight included). */
  fds: FdImage[];
  /** Above every fd number of the process: where temporaries go. */
  floor: number;
  /** Where the deleted file behind `f` was made again. */
  ghostPath(f: FdImage): string;
  /** Where a memfd that restore already made (it is mapped) is open now, if it is. */
  memfdAt(f: FdImage): { pid: number; fd: number } | undefined;
  /**
   * Pipes and socket pairs: created once both ends of the process are
   * known, after every other file; `id` names the pipe or the pair.
   */
  defer(what: 'pipe' | 'pair', id: number, group: FdImage[]): void;
  /** A dumped pid as restored (differs with --new-pid). */
  pidNow(pid: number): number;
  warn?: (m: string) => void;
  /** restore --tcp-close: connections come back as closed sockets. */
  tcpClose: boolean;
  /** State a kind keeps for the whole restore (all processes of the tree), made on first use. */
  state<T>(key: string, make: () => T): T;
  /** The ptys of the whole restore (files/tty.ts). */
  ptys: PtyRestorer;
}

export interface FdKindModule {
  /** Dump: records this kind's state in `img`. */
  describe?(c: DescribeContext, img: FdImage): void;
  /**
   * Dump, once every fd of the set is described: throws a TsnapError
   * naming the fd when restore could not bring it back in its state.
   */
  checkDump?(img: FdImage, c: DumpCheckContext): void;
  /**
   * Whether the image holds what restore needs. Asked at dump (a refusal
   * before the freeze) and again by restore's preflight, so both refuse
   * the same fds.
   */
  restorable(img: FdImage): boolean;
  /** Said after "that tsnap cannot checkpoint" when not restorable. */
  refusalHint?: string;
  /** Restore, before anything exists: what the fd needs outside the image is there. */
  preflight?(img: FdImage): void;
  /** Restore: creates the open file behind `group` (the fds of one open file description). */
  restore(c: RestoreContext, group: FdImage[]): void;
  /** Restore, once every fd of the process exists (epoll registrations name other fds). */
  link?(c: RestoreContext, img: FdImage): void;
  /**
   * Restore, last, once every thread and file of the tree exists (inotify
   * watches: restore's own work must not show in their queues).
   */
  late?(c: RestoreContext, img: FdImage): void;
}

/** A kind tsnap cannot checkpoint: refused at dump, naming it. */
export function unsupportedKind(refusalHint?: string): FdKindModule {
  return {
    restorable: () => false,
    refusalHint,
    restore: (_c, group) => {
      throw new Error(`fd ${group[0].fd}: a ${group[0].kind} reached restore although no image can hold one`);
    },
  };
}

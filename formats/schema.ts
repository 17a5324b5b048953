/**
 * tsnap image format, version 1 (and 2: two pages files, FORMAT_VERSION_SPLIT): the TypeScript schema shared by the writer,
 * the reader, `tsnap show` and the tests. formats/image-v1.md is the
 * readable specification of the same thing; keep the two in step.
 *
 * Compatibility rules: readers ignore unknown fields; a change that old
 * readers would misread bumps FORMAT_VERSION.
 */

export const FORMAT_VERSION = 1;
/**
 * Version 2: the page data may be split over two pages files (`pages` and
 * `pages.1`, written by two threads at once; formats/image-v1.md, "Two
 * pages files"). An image whose data is in one file is written as version
 * 1, byte for byte as before; readers read both.
 */
export const FORMAT_VERSION_SPLIT = 2;
/** The versions this tsnap reads. */
export const READ_VERSIONS: readonly number[] = [FORMAT_VERSION, FORMAT_VERSION_SPLIT];
/** The pages files by index (ChunkEntry.file): `pages`, then `pages.1` (format 2). */
export const PAGES_FILES = ['pages', 'pages.1'] as const;
export const MAGIC = 'TSNAPIMG';
export const HEADER_SIZE = 32;

/** Every image file starts with a header naming its kind. */
export enum FileKind {
  Inventory = 1,
  Process = 2,
  Pagemap = 3,
  Pages = 4,
  Stats = 5,
  Tree = 6,
}

/**
 * Header flags a reader must understand (formats/image-v1.md "Header
 * flags"): a reader refuses any it does not know, so a field that changes
 * what restore must do is never silently ignored by an older tsnap.
 * Set on the `process` file when a thread has seccomp state to install.
 */
export const PROCESS_FLAG_SECCOMP = 1;
/**
 * Set on the `process` file when its payload uses msgpackr's record
 * extension (formats/image-v1.md "Records in the process file", tsnap
 * 2026-12-03+): objects of one key set are written as a structure
 * definition once and its values after it, which is no longer plain
 * msgpack (fixints 0x40-0x7f become structure references). A reader that
 * does not know the flag refuses the file instead of misreading it.
 */
export const PROCESS_FLAG_RECORDS = 2;

export const FILE_NAMES: Record<FileKind, string> = {
  [FileKind.Inventory]: 'inventory',
  [FileKind.Process]: 'process',
  [FileKind.Pagemap]: 'pagemap',
  [FileKind.Pages]: 'pages',
  [FileKind.Stats]: 'stats',
  [FileKind.Tree]: 'tree',
};

/**
 * A process tree image (dump --tree): the directory holds this manifest and
 * one ordinary image directory per process, named by its pid. The manifest
 * is written last and is the tree's commit record.
 */
export interface TreeManifest {
  formatVersion: number;
  createdAt: string;
  root: number;
  contents: 'dump' | 'predump';
  /** Parents before their children. */
  processes: TreeMember[];
}

export interface TreeMember {
  pid: number;
  /** Parent pid; for the root, its parent outside the tree. */
  ppid: number;
  /** Image directory of this process, relative to the tree directory ('' for a zombie). */
  dir: string;
  /**
   * A child that had exited and was not reaped yet: nothing to image, only
   * what its parent will collect (wait status as /proc/PID/stat exit_code)
   * and its group and session, and (tsnap 0.2+, optional) its credentials,
   * which its parent sees too (waitid's si_uid); securebits are 0, since a
   * zombie cannot be asked.
   */
  zombie?: { status: number; pgid: number; sid: number; creds?: CredsImage };
  /**
   * It shares its parent's fd table (clone with CLONE_FILES; optional):
   * restore forks it so, and its fds are those of the parent's table.
   */
  filesShared?: boolean;
  /**
   * The `imageId` of the member's image (tsnap 0.2+, optional): binds the
   * directory to this tree dump, so a process image from another dump is refused.
   */
  imageId?: string;
}

export type Compression = 'none' | 'lz4';

/** The commit record of an image: written last, so an image without it is incomplete. */
export interface Inventory {
  formatVersion: number;
  imageId: string;
  createdAt: string;
  tool: { name: string; version: string };
  /** full: every page is here or zero; delta: some pages are in the parent. */
  kind: 'full' | 'delta';
  parent: ParentRef | null;
  pid: number;
  arch: 'x86_64';
  kernel: string;
  pageSize: number;
  chunkSize: number;
  compression: Compression;
  /** Length and CRC-32 of each metadata file's payload, and the page file's size. */
  files: Record<string, { length: number; crc32: number }>;
  /**
   * 'dump': a complete, restorable image (process file present).
   * 'predump': memory only, taken while the process ran; the base of later deltas.
   */
  contents?: 'dump' | 'predump';
  /** Where the dirty-page tracking of this process lives, for the next delta. */
  tracking?: TrackingRef | null;
  /**
   * The process's start time (/proc/PID/stat field 22, clock ticks after
   * boot): with `pid`, which process this is. A round with this image as
   * its parent refuses a process of the same pid and another start time
   * (the first exited and its pid was reused). Absent in older images.
   */
  startTime?: number;
}

/** Identifies a live tracking: the holder process and the tracked process incarnation. */
export interface TrackingRef {
  holderPid: number;
  holderStartTime: number;
  targetPid: number;
  targetStartTime: number;
  /** AT_RANDOM of the tracked address space: changes on exec, which ends tracking. */
  mmId: string;
}

export interface ParentRef {
  /** Path of the parent image directory, relative to this image's directory. */
  path: string;
  imageId: string;
}

export interface ProcessImage {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  comm: string;
  exe: FileIdentity & { path: string };
  cwd: string;
  /** The cwd's inode (optional): a deleted cwd that an fd also holds comes back as that same directory. */
  cwdFile?: { dev: number; ino: number };
  root: string;
  umask: number;
  personality: number;
  /** /proc/PID/oom_score_adj (optional: absent in older images). */
  oomScoreAdj?: number;
  creds: { uid: number[]; gid: number[] };
  /** Process start time in clock ticks since boot: identifies this incarnation of the pid. */
  startTime: number;
  rlimits: RlimitImage[];
  threads: ThreadImage[];
  signals: SignalImage;
  mm: MmImage;
  fds: FdImage[];
  /**
   * memfds the process maps (tsnap 0.2+, optional): identified by the
   * dev/ino of the VMAs' `file`, with their whole contents. In a tree every
   * process stores those it maps; restore creates each memfd once.
   */
  memfds?: MemfdObjectImage[];
  /**
   * SysV shared memory segments the process has attached (tsnap 0.2+,
   * optional), each whole: restore attaches the same segment (the same id)
   * at the same addresses; VMAs name it by their inode (the shmid).
   */
  sysvShm?: SysvShmImage[];
  /**
   * Deleted files the process maps (tsnap 0.2+, optional), by the dev/ino
   * of the VMAs' `file`: path at the dump, inode and data extents as for a
   * deleted fd (`GhostImage`; `extents` never null here, empty with `alias`). Restore makes the
   * file again, maps it and unlinks it; an inode also open as a deleted fd
   * is one file.
   */
  mappedGhosts?: MappedGhostImage[];
  /**
   * Kernel aio contexts (io_setup; tsnap 0.2+, optional): the VMA of each
   * ring ("/[aio]", MAP_SHARED, never dumped) and the ring's bytes at the
   * dump: header (nr, head, tail) and events. See src/files/aio.ts.
   */
  aioRings?: AioRingImage[];
  /**
   * Interval timers (setitimer/alarm: 0 REAL, 1 VIRTUAL, 2 PROF) that were
   * armed, with the time left and the period, in µs (tsnap 0.2+, optional).
   */
  itimers?: { which: number; valueUs: number; intervalUs: number }[];
  /** POSIX timers (timer_create), with their ids (tsnap 0.2+, optional). */
  posixTimers?: PosixTimerImage[];
  /**
   * The signal of the group stop the process was in (SIGSTOP 19, SIGTSTP
   * 20, SIGTTIN 21, SIGTTOU 22); absent when it was running. Restore stops
   * it again before it runs an instruction.
   */
  stopSignal?: number;
  prctl: {
    dumpable: number;
    pdeathsig: number;
    childSubreaper: number;
    noNewPrivs: number;
    thpDisable: number;
    /**
     * membarrier() registrations of the mm (MEMBARRIER_CMD_GET_REGISTRATIONS:
     * a mask of the MEMBARRIER_CMD_REGISTER_* bits); optional, 0 when none.
     */
    membarrier?: number;
  };
  /** /proc/PID/loginuid (4294967295: unset); optional. */
  loginuid?: number;
  /**
   * The controlling terminal (/proc/PID/stat tty_nr as a dev_t, tpgid: its
   * foreground group, 0 for none); absent when the process had none
   * (tsnap 0.2+, optional). A pty of the dump (its master is in the image)
   * comes back; any other terminal is restore's own (files/tty.ts).
   */
  ctty?: { rdev: number; fgPgid: number };
}

export interface FileIdentity {
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
}

export interface RlimitImage {
  resource: number;
  name: string;
  cur: bigint;
  max: bigint;
}

export interface ThreadImage {
  tid: number;
  /** struct user_regs_struct, 216 bytes, as PTRACE_GETREGS returned it. */
  regs: Buffer;
  /** The XSAVE area as PTRACE_GETREGSET(NT_X86_XSTATE) returned it. */
  xstate: Buffer;
  sigmask: bigint;
  sigaltstack: { sp: bigint; flags: number; size: bigint };
  /** Set when the thread was stopped inside a syscall that must be re-entered. */
  syscallRestart: SyscallRestart | null;
  clearChildTid: bigint;
  robustList: { head: bigint; len: bigint };
  rseq: { pointer: bigint; size: number; signature: number; flags: number } | null;
  /** siginfo records (128 bytes each) queued for this thread. */
  pendingSignals: Buffer[];
  /**
   * This thread's credentials (tsnap 0.2+, optional): Linux keeps them per
   * thread. Images without them are restored with tsnap's own (root).
   */
  creds?: CredsImage;
  /**
   * The thread's seccomp state (optional; absent: none). Its presence sets
   * the process file's header flag PROCESS_FLAG_SECCOMP, so that a tsnap
   * that does not know this field refuses the image instead of restoring
   * the process without its filters.
   */
  seccomp?: SeccompImage;
}

/** A thread's seccomp mode and filters (PTRACE_SECCOMP_GET_FILTER). */
export interface SeccompImage {
  /** 1 strict, 2 filter. */
  mode: number;
  /** Oldest first: the order they were (and are) installed in. */
  filters: { prog: Buffer; flags: number }[];
}

/** Credentials of one thread; capability sets are bit masks (bit n = capability n). */
export interface CredsImage {
  /** real, effective, saved, filesystem */
  uid: number[];
  /** real, effective, saved, filesystem */
  gid: number[];
  /** Supplementary groups. */
  groups: number[];
  capInh: bigint;
  capPrm: bigint;
  capEff: bigint;
  capBnd: bigint;
  capAmb: bigint;
  /** SECBIT_* flags and their locks (PR_GET_SECUREBITS). */
  securebits: number;
  /** 0 or 1 (PR_GET_NO_NEW_PRIVS of this thread). */
  noNewPrivs: number;
}

export interface SyscallRestart {
  /** orig_rax: the interrupted syscall. */
  nr: number;
  /** -rax: ERESTARTSYS 512, ERESTARTNOINTR 513, ERESTARTNOHAND 514, ERESTART_RESTARTBLOCK 516. */
  code: number;
}

export interface SigactionImage {
  signo: number;
  handler: bigint;
  flags: bigint;
  restorer: bigint;
  mask: bigint;
}

export interface SignalImage {
  /** Actions for signals 1..64, except SIGKILL and SIGSTOP. */
  actions: SigactionImage[];
  /** siginfo records queued for the whole process. */
  sharedPending: Buffer[];
}

export interface MmImage {
  startCode: number;
  endCode: number;
  startData: number;
  endData: number;
  startBrk: number;
  brk: number;
  startStack: number;
  argStart: number;
  argEnd: number;
  envStart: number;
  envEnd: number;
  /** Raw /proc/PID/auxv, AT_NULL terminated. */
  auxv: Buffer;
  vmas: VmaImage[];
}

export type VmaSpecial = 'heap' | 'stack' | 'vdso' | 'vvar' | 'vvar_vclock' | 'vsyscall' | null;

export interface VmaImage {
  start: number;
  end: number;
  /** PROT_READ 1 | PROT_WRITE 2 | PROT_EXEC 4. */
  prot: number;
  shared: boolean;
  /** File offset for file mappings, 0 otherwise. */
  pgoff: number;
  /** '' for anonymous memory; the file path; or the bracketed name ([heap], [anon:x]). */
  path: string;
  special: VmaSpecial;
  file: (FileIdentity & { devMajor: number; devMinor: number; deleted: boolean }) | null;
  /** Whether its pages are stored in the image (private memory and shared anonymous memory). */
  dumped: boolean;
  /**
   * The VmFlags of /proc/PID/smaps that restore sets again (VMA_RESTORED_FLAGS:
   * madvise advice, mlock, MAP_NORESERVE, MAP_DROPPABLE). Absent in images
   * made before tsnap recorded them.
   */
  flags?: string[];
  /**
   * Guard regions (MADV_GUARD_INSTALL) inside the VMA, as [start, end)
   * addresses, page-aligned (tsnap 0.2+, optional; absent: none, or a kernel
   * whose PAGEMAP_SCAN cannot report them). Their pages are never stored.
   */
  guards?: [number, number][];
}

/**
 * VmFlags tokens restore re-applies, and how: `advice` by madvise(), `lock`
 * by mlock2() after the pages are written, `map` as an mmap flag.
 */
export const VMA_RESTORED_FLAGS = {
  sr: { advice: 2 },   // MADV_SEQUENTIAL
  rr: { advice: 1 },   // MADV_RANDOM
  dc: { advice: 10 },  // MADV_DONTFORK
  dd: { advice: 16 },  // MADV_DONTDUMP
  mg: { advice: 12 },  // MADV_MERGEABLE
  hg: { advice: 14 },  // MADV_HUGEPAGE
  nh: { advice: 15 },  // MADV_NOHUGEPAGE
  wf: { advice: 18 },  // MADV_WIPEONFORK
  lo: { lock: 0 },     // mlock
  lf: { lock: 1 },     // mlock2(MLOCK_ONFAULT)
  nr: { map: 0x4000 }, // MAP_NORESERVE
  dp: { map: 0x08 },   // MAP_DROPPABLE (a map type: replaces MAP_PRIVATE)
  mw: { mayWrite: true }, // VM_MAYWRITE: a shared file mapping whose file was opened for writing (mprotect may add PROT_WRITE)
} as const satisfies Record<string, { advice?: number; lock?: number; map?: number; mayWrite?: boolean }>;

export type FdKindImage = 'file' | 'dir' | 'devnull' | 'tty' | 'pipe' | 'fifo' | 'socket' | 'anon_inode' | 'chardev' | 'blockdev' | 'memfd'
  | 'eventfd' | 'epoll' | 'timerfd' | 'signalfd' | 'other';

/**
 * The inode behind a deleted file or directory: size, mode (permission
 * bits), owner and, for a file, its data as (offset, bytes) extents between
 * holes; `extents` is null for a directory and for every fd of an inode
 * but the first of the image, which holds them.
 */
export interface GhostImage {
  size: number;
  mode: number;
  uid: number;
  gid: number;
  /** Access and modification times, ms since the epoch (optional). */
  atimeMs?: number;
  mtimeMs?: number;
  extents: { offset: number; data: Buffer }[] | null;
  /**
   * Another name of the same inode in the same directory, when the file
   * was deleted under one name but still has others (tsnap 0.2+,
   * optional): restore opens that name, the contents are not stored.
   */
  alias?: string;
}

export interface AioRingImage {
  start: number;
  end: number;
  ring: Buffer;
}

export interface MappedGhostImage extends GhostImage {
  dev: number;
  ino: number;
  path: string;
}

export interface FdImage {
  fd: number;
  kind: FdKindImage;
  /** The /proc/PID/fd link text ('pipe:[123]', '/dev/pts/1', a path). */
  link: string;
  path: string | null;
  /** Open flags (O_ACCMODE, O_APPEND, O_NONBLOCK...) from fdinfo; O_CLOEXEC included. */
  flags: number;
  pos: number;
  file: FileIdentity & { mode: number; rdev: number; deleted: boolean } | null;
  /**
   * Open file description: fds with the same ofd share offset and status
   * flags (dup, or inherited through fork) and are restored as one file
   * duplicated. Absent in images of tsnap 0.1.
   */
  ofd?: number;
  /**
   * F_SETOWN_EX / F_SETSIG of the open file, when set: who gets its SIGIO
   * or SIGURG (type 0 thread, 1 process, 2 process group) and which signal
   * (0: SIGIO). Absent when no owner and no signal were set.
   */
  owner?: { type: number; pid: number; signal: number };
  /** F_GETLEASE of the open file when it holds a lease: 0 F_RDLCK, 1 F_WRLCK (optional). */
  lease?: number;
  /** A file or directory deleted while open: what restore makes again (files/ghost.ts). */
  ghost?: GhostImage;
  /** Pipes and FIFOs: which pipe (its inode) and, on one end only, the bytes buffered in it. */
  pipe?: PipeImage;
  eventfd?: { count: bigint; semaphore: boolean };
  epoll?: { targets: EpollTargetImage[] };
  timerfd?: TimerfdImage;
  signalfd?: { mask: bigint };
  socket?: SocketImage;
  /**
   * Named FIFOs: capacity and the unread bytes at dump (put back only into
   * an empty FIFO); `ghost` for a FIFO deleted while open: its permission
   * bits and owner, to make it again.
   */
  fifo?: { capacity: number; data: Buffer; ghost?: { mode: number; uid: number; gid: number } };
  /** memfd: its name (without "memfd:"), whole contents, seals and (optional) permission bits. */
  memfd?: { name: string; data: Buffer; seals: number; mode?: number };
  /** Pseudo-terminals of the dump and /dev/tty (files/tty.ts); absent for a terminal on 0-2 that is stdio. */
  tty?: TtyImage;
  /**
   * A pidfd (anon_inode:[pidfd]): the process it names, -1 for one that was
   * reaped, and its pidfs inode (one per process: dead pidfds with the same
   * inode were of the same process); `leader` when it names a thread other
   * than its process's leader (PIDFD_THREAD): then `pid` is that thread's tid.
   */
  pidfd?: { pid: number; ino: number; leader?: number };
  /**
   * An O_PATH fd on a symlink itself: what the link says, its inode and
   * owner (a link deleted while open is made again from these).
   */
  symlink?: { target: string; ino: number; uid: number; gid: number };
  /** A namespace fd of the process's own namespace: its /proc/PID/ns entry ('net', 'pid_for_children'...) and nsfs inode. */
  nsfs?: { file: string; ino: number };
  /** An inotify instance: its watches, in wd order (the queued events are not kept). */
  inotify?: { watches: InotifyWatchImage[] };
}

export interface InotifyWatchImage {
  wd: number;
  /** As fdinfo shows it: the events, IN_ONESHOT, IN_EXCL_UNLINK. */
  mask: number;
  /** The watched inode (dev as stat reports it). */
  dev: number;
  ino: number;
  /** Its path at the dump, or null when it had none (deleted) ... */
  path: string | null;
  /** ... and then an fd of the process that holds it. */
  via?: number;
  /**
   * The inode's file handle (f_handle bytes, optional): restore checks the
   * path still has it, which tells a replaced file that got the same inode
   * number from the original.
   */
  handle?: Buffer;
}

/**
 * A tty fd tsnap recreates: `master` (/dev/ptmx) and `slave` (/dev/pts/N)
 * of a pty whose master is in the dump, `slave` with `hungUp` (its master
 * was closed: reads give EOF, writes EIO), `ctty` (/dev/tty, the alias
 * of the process's controlling terminal, opened again once it has it), or
 * `stdio`: above fd 2, the terminal outside the dump that is on stdio fd
 * `index` too (a shell's fd 255), restored as that fd of restore's stdio.
 */
export interface TtyImage {
  type: 'master' | 'slave' | 'ctty' | 'stdio';
  /** The pts index (N of /dev/pts/N); -1 for ctty; the stdio fd (0-2) for stdio. */
  index: number;
  /** stdio: the same open file as that stdio fd (dup), not another open of its terminal. */
  dup?: boolean;
  /** slave: hung up (the master was closed before the dump). */
  hungUp?: boolean;
  /** slave: TIOCEXCL is set (further opens need CAP_SYS_ADMIN). */
  exclusive?: boolean;
  /** master: the state of the pair (the same on every master fd of it). */
  pty?: PtyImage;
}

export interface PtyImage {
  /** struct termios2 of the slave side (TCGETS2), 44 bytes. */
  termios: Buffer;
  /** struct termios of its locked bits (TIOCGLCKTRMIOS), 36 bytes. */
  lockedTermios: Buffer;
  /** struct winsize (TIOCGWINSZ), 8 bytes. */
  winsize: Buffer;
  /** TIOCGPTLCK: the slave cannot be opened (unlockpt not called, or locked again). */
  locked: boolean;
  /** TIOCGPKT: packet mode of the master. */
  packet: boolean;
  /** POLLHUP on the master: every slave fd was closed (master reads give EIO once drained). */
  slaveClosed: boolean;
  /** Bytes waiting for the slave side to read (written to the master), and for the master side to read. */
  input: Buffer;
  output: Buffer;
  /** The session it is the controlling terminal of (TIOCGSID), 0 for none, and its foreground group (TIOCGPGRP). */
  session: number;
  fgPgid: number;
}

export interface PosixTimerImage {
  id: number;
  clockid: number;
  signo: number;
  /** sigev_value. */
  value: bigint;
  notify: 'signal' | 'thread' | 'none';
  /** The thread a 'thread' timer signals (SIGEV_THREAD_ID). */
  tid: number;
  /** Time left to the next expiry and the period, in ns (0/0: disarmed). */
  valueNs: bigint;
  intervalNs: bigint;
}

export interface SysvShmImage {
  shmid: number;
  /** 0 (IPC_PRIVATE) for private segments and for removed ones (SHM_DEST). */
  key: number;
  size: number;
  /** Permission bits, plus SHM_DEST (0o1000) when removal was asked while attached. */
  mode: number;
  uid: number;
  gid: number;
  /** The segment's bytes at the dump, `size` of them. */
  data: Buffer;
}

export interface MemfdObjectImage {
  dev: number;
  ino: number;
  name: string;
  data: Buffer;
  seals: number;
  /** Permission bits (fchmod), tsnap 0.2+ (optional: absent, the memfd keeps 0777). */
  mode?: number;
}

export interface PipeImage {
  id: number;
  capacity: number;
  /** Unread bytes, stored with the first fd of the pipe in the image; null on the others. */
  data: Buffer | null;
  /**
   * A half-closed pipe (optional): the end no process held any more at
   * dump. Every fd of the pipe in the image is of the other end; restore
   * closes this one once the bytes are back.
   */
  closedEnd?: 'read' | 'write';
}

export interface EpollTargetImage {
  /** fd number the target was registered under. */
  fd: number;
  /**
   * An fd of the process that holds the target file, when `fd` no longer
   * does (closed after a dup, or reused): restore registers the file from
   * it under `fd` (optional).
   */
  via?: number;
  events: number;
  data: bigint;
}

export interface TimerfdImage {
  clockid: number;
  /** Time left to the next expiry and the period, in ns (0/0: disarmed). */
  valueNs: bigint;
  intervalNs: bigint;
  /** Expirations not yet read. */
  ticks: bigint;
}

export interface SocketImage {
  family: number;
  type: number;
  protocol: number;
  /**
   * listening: bound and listening; bound: bound or unbound, not connected
   * (datagram peer in `peer`); pair: a unix socket connected to another
   * socket of the image (socketpair, or accepted from a listener);
   * peer-closed: a unix socket whose peer was closed (its queue is still
   * readable: restored as one end of a pair whose other end is closed).
   */
  state: 'listening' | 'bound' | 'pair' | 'established' | 'peer-closed';
  /** Raw sockaddr of getsockname (empty for an unbound socket). */
  local: Buffer;
  /**
   * Raw sockaddr of the connected peer of a datagram socket, or null. Unix
   * `bound` sockets: the name they connect to again at restore once every
   * socket exists (a datagram socket connected one way to a receiver, a
   * client whose connection waits in a listener's queue).
   */
  peer: Buffer | null;
  backlog: number;
  reuseAddr: boolean;
  reusePort: boolean;
  v6Only: boolean;
  /** pair: this socket's inode and its peer's, which identify the two ends. */
  ino?: number;
  peerIno?: number;
  /**
   * Data queued for reading on this end, one buffer per datagram (one for a
   * stream): pair and peer-closed ends, and named unix datagram sockets
   * (senders' names are not kept: the datagrams come back from an unnamed socket).
   */
  queued?: Buffer[];
  /**
   * pair: the queue of this end message by message, when a message in it
   * carries files (SCM_RIGHTS) or the socket reads its senders' credentials
   * (SO_PASSCRED); `queued` is empty then. On one fd of the socket only.
   */
  scm?: ScmImage;
  /** Unix: the directory (the process's cwd at dump) a relative `local` name was bound in. */
  dir?: string;
  /** Unix: the same for a relative `peer` name. */
  peerDir?: string;
  /** peer-closed stream: the peer was closed with data unread, so the next read fails with ECONNRESET. */
  reset?: boolean;
  /**
   * sk_shutdown (shutdown(2)): 1 receive, 2 send, 3 both; unix and UDP
   * sockets, and a TCP socket that is not connected and has some (a
   * connection that ended while its fd stayed open).
   */
  shutdown?: number;
  /** A classic BPF filter (SO_ATTACH_FILTER): its instructions, 8 bytes each; `filterLocked`: SO_LOCK_FILTER. */
  filter?: Buffer;
  filterLocked?: boolean;
  /** established (dump --tcp-established): what TCP repair mode needs to rebuild the connection. */
  tcp?: TcpImage;
  /**
   * A unix socket bound to a path: the socket file's permission bits and
   * owner at dump (optional), set again after the bind (which makes it as
   * the restoring tsnap, with its umask).
   */
  pathFile?: { mode: number; uid: number; gid: number };
  /**
   * Socket options restore sets again (files/socket-options.ts), each
   * [level, option, value as getsockopt returned it] (optional).
   */
  options?: [number, number, Buffer][];
}

/** A unix socket's receive queue with the files and credentials in flight in it (files/scm-rights.ts). */
export interface ScmImage {
  /** In queue order. */
  messages: ScmMessageImage[];
  /**
   * The files in flight, each an fd image like any other: the same open
   * file as an fd of the image shares its `ofd`. Their `fd` is the number
   * restore gives them while it queues them again: above every fd of the
   * process, closed once sent.
   */
  files: FdImage[];
}

export interface ScmMessageImage {
  /**
   * The bytes: a datagram or SEQPACKET record whole. On a stream, what one
   * read returns up to the files (a read stops after the write that carried
   * them, or where the sender changes), split so that the files ride with
   * its last byte: where the write carrying them started cannot be seen.
   */
  data: Buffer;
  /** The files it carries (SCM_RIGHTS), as `fd` numbers of ScmImage.files, in order. */
  fds: number[];
  /**
   * Its sender's credentials as the receiver reads them (SCM_CREDENTIALS,
   * with SO_PASSCRED). A socket without SO_PASSCRED shows none: the
   * receiving process (its real uid and gid) is recorded instead.
   */
  creds: { pid: number; uid: number; gid: number };
}

export interface TcpImage {
  /** Raw sockaddrs of both ends. */
  local: Buffer;
  peer: Buffer;
  /**
   * Sequence number following each queue (TCP_QUEUE_SEQ: rcv_nxt, write_seq)
   * and the queue's contents (the send queue includes unacknowledged data).
   */
  recvSeq: number;
  recvQueue: Buffer;
  sendSeq: number;
  sendQueue: Buffer;
  mss: number;
  sack: boolean;
  wscale: { snd: number; rcv: number } | null;
  /** The connection's TCP timestamp clock at dump, or null without timestamps. */
  timestamp: number | null;
  /** struct tcp_repair_window (snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup). */
  window: Buffer;
  /**
   * The TCP state when not ESTABLISHED (optional): FIN_WAIT1 4, FIN_WAIT2
   * 5, CLOSE_WAIT 8, LAST_ACK 9, CLOSING 11. The sequence numbers then
   * count the FINs sent and received; the queues hold data only.
   */
  state?: number;
  /** SO_SNDBUF and SO_RCVBUF as getsockopt gave them (optional). */
  sndbuf?: number;
  rcvbuf?: number;
  /**
   * The id of the netfilter rules that keep the connection silent from the
   * dump to its restore (src/files/tcp-lock.ts), which restore removes
   * (optional: no lock).
   */
  lock?: string;
}

/** Where the data of a page run lives. */
export enum PageWhere {
  /** In this image's pages file. */
  Here = 0,
  /** In the parent image (delta images only). */
  Parent = 1,
  /** All zero: map fresh anonymous memory. */
  Zero = 2,
}

/**
 * A run of consecutive pages. Runs are sorted by address and never overlap.
 * A Here run lies inside one chunk: `offset` is the byte offset of its first
 * page within the chunk's uncompressed data.
 * Encoded as a 5-element array [start, pages, where, chunk, offset].
 */
export interface PageRun {
  start: number;
  pages: number;
  where: PageWhere;
  chunk: number;
  offset: number;
}

export interface ChunkEntry {
  /** Byte offset of the chunk's stored data in the pages file (after the header). */
  fileOffset: number;
  storedLength: number;
  rawLength: number;
  codec: Compression;
  /** CRC-32 (IEEE) of the stored bytes. */
  crc32: number;
  /** Which pages file holds it (PAGES_FILES): 0 (`pages`) when absent, 1 (`pages.1`) only in format 2. */
  file?: number;
}

export interface PagemapImage {
  chunks: ChunkEntry[];
  runs: PageRun[];
  /** The memory layout the runs describe (also in `process` for full dumps). */
  vmas?: VmaImage[];
}

export interface DumpStats {
  /** Time from the freeze request until the target was stopped (µs). */
  freezeUs: number;
  /** Time the target spent stopped (µs). */
  frozenUs: number;
  /** Time spent copying and writing memory (µs). */
  memdumpUs: number;
  totalUs: number;
  vmas: number;
  pagesScanned: number;
  pagesWritten: number;
  pagesZero: number;
  pagesSlowPath: number;
  bytesRaw: number;
  bytesStored: number;
  throughputMiBps: number;
  compression: Compression;
  /** Incremental rounds: VMAs copied whole (new to tracking), tracked, impossible to track. */
  vmasFresh?: number;
  vmasTracked?: number;
  vmasUntracked?: number;
  /** Pages unmapped while a pre-dump read them (copied again next round). */
  pagesVanished?: number;
  /** Copy-on-write dumps (the target ran while its memory was copied). */
  cow?: CowStats;
  /** Where the frozen time went (tsnap 0.2+, optional). */
  frozenParts?: FrozenParts;
  /** The one-copy path: pages vmspliced by the frozen target into pipes, spliced into the pages file (optional). */
  splice?: SpliceStats;
}

/** How a one-copy dump moved its pages (µs on tsnap's main thread). */
export interface SpliceStats {
  /** Pipes made in the target, and the bytes each held. */
  pipes: number;
  pipeBytes: number;
  /** Remote steps (one guardian request each) that vmspliced a batch of pipes. */
  trips: number;
  /** Pages that went through a pipe (the rest: pagesWritten - pagesSpliced, the usual way). */
  pagesSpliced: number;
  /** The remote steps; the splices into the file (both on the main thread, the target frozen). */
  fillUs: number;
  spliceUs: number;
  /**
   * Reading the chunks back for their CRCs, on worker threads while the
   * splices go on: from the first to the last, and how much of it came
   * after the last splice (the target may run by then).
   */
  crcUs: number;
  crcAfterUs: number;
  /**
   * Where the read-backs ran (tsnap 0.2+, optional): `pool` in C on a
   * thread of libuv's pool, `thread` on a worker thread, `inline` on the
   * main thread between splices.
   */
  crcOn?: 'pool' | 'thread' | 'inline';
  /** vmsplice refused outright with this errno: the rest was copied the usual way. */
  refusedErrno?: number;
  /**
   * Pages files written (optional, 1 when absent): 2 when every other
   * chunk went to `pages.1`, spliced there by a thread of libuv's pool while
   * the main thread spliced into `pages` (format 2).
   */
  files?: number;
  /** With 2 files: how long the main thread waited for the pool's splices after its own (µs). */
  poolWaitUs?: number;
  /**
   * Chunks whose CRC the splicing thread read back right after storing
   * them (a chunk that is one whole piece; CRCs on the pool): the others
   * went to the pool's reader.
   */
  crcsSpliced?: number;
}

/**
 * The frozen part of a dump, step by step (µs, each measured on tsnap's main
 * thread; steps that overlap are each counted whole).
 */
export interface FrozenParts {
  /** Remote syscalls and ptrace reads of the threads' and process's state. */
  stateUs: number;
  /** /proc/PID/maps and the VmFlags of smaps, plus guard regions. */
  layoutUs: number;
  /** The rest of the process image from /proc (fds, limits, files). */
  processUs: number;
  /** The last PAGEMAP_SCAN of a delta (and its arming), or the page selection of a full dump. */
  scanUs: number;
  /** Remote syscalls run, and the guardian round trips they took. */
  remoteSyscalls: number;
  guardianCalls: number;
}

/** Figures of a copy-on-write dump (src/dump/cow-session.ts). */
export interface CowStats {
  /** Pages write-protected and copied while the target ran. */
  pagesProtected: number;
  /** Pages copied while frozen (memory write-protection cannot take). */
  pagesFrozenCopy: number;
  /** Write faults the target took on protected pages. */
  faults: number;
  /** Pages saved by the fault server ahead of the copy. */
  faultPages: number;
  /** Faults that waited for the sequential copy (fault store full). */
  faultsDeferred: number;
  /** Time from reading a fault to waking its writer, mean and max (µs). */
  faultMeanUs: number;
  faultMaxUs: number;
  /** The copy while the target ran (µs). */
  copyUs: number;
  /** The page scan, making the uffd, registering, the frozen copy and protecting, all while frozen (µs). */
  armUs: number;
  /**
   * Memory protected before the freeze (tsnap 0.2+, optional): the stop
   * that made the uffd (µs, not part of frozenUs), registering and
   * protecting while the process ran (µs), the write faults let go before
   * the freeze, and the pages written meanwhile that were protected again,
   * frozen.
   */
  preStopUs?: number;
  prearmUs?: number;
  earlyFaults?: number;
  pagesReprotected?: number;
  /**
   * The frozen window (tsnap 0.2+, optional; src/dump/frozen-window.ts):
   * whether it ran in the real-time class, how long tsnap's main thread and
   * the guardian waited for a CPU in it (µs), the target's threads likewise
   * (µs; since 2026-12-03 in the real-time class too, targetRt), and the
   * release (µs).
   */
  windowRt?: boolean;
  targetRt?: boolean;
  windowWaitUs?: number;
  guardianWaitUs?: number;
  targetWaitUs?: number;
  releaseUs?: number;
}

/**
 * Linux x86-64 uapi numbers and struct layouts used by tsnap, in one place.
 * Debian 12's headers predate PAGEMAP_SCAN, so everything is defined here;
 * values were checked on the target kernel (see docs/design.md).
 */

export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;

export const SYS = {
  read: 0,
  shmget: 29,
  shmat: 30,
  shmctl: 31,
  shmdt: 67,
  write: 1,
  close: 3,
  poll: 7,
  mmap: 9,
  mprotect: 10,
  munmap: 11,
  brk: 12,
  rt_sigaction: 13,
  rt_sigprocmask: 14,
  timer_create: 222,
  timer_settime: 223,
  timer_gettime: 224,
  getitimer: 36,
  setitimer: 38,
  rt_sigqueueinfo: 129,
  rt_tgsigqueueinfo: 297,
  ioctl: 16,
  sched_yield: 24,
  sched_getparam: 143,
  sched_setscheduler: 144,
  sched_getscheduler: 145,
  mremap: 25,
  io_setup: 206,
  wait4: 61,
  io_submit: 209,
  madvise: 28,
  mlock2: 325,
  getpid: 39,
  clone: 56,
  exit: 60,
  kill: 62,
  umask: 95,
  prctl: 157,
  seccomp: 317,
  setgroups: 116,
  setresuid: 117,
  setresgid: 119,
  setfsuid: 122,
  setfsgid: 123,
  capset: 126,
  arch_prctl: 158,
  gettid: 186,
  tkill: 200,
  sigaltstack: 131,
  personality: 135,
  restart_syscall: 219,
  exit_group: 231,
  tgkill: 234,
  get_robust_list: 274,
  set_robust_list: 273,
  prlimit64: 302,
  process_vm_readv: 310,
  process_vm_writev: 311,
  userfaultfd: 323,
  membarrier: 324,
  rseq: 334,
  openat: 257,
  mknodat: 259,
  dup3: 292,
  lseek: 8,
  fcntl: 72,
  flock: 73,
  chdir: 80,
  fchdir: 81,
  socket: 41,
  sendto: 44,
  recvfrom: 45,
  setpgid: 109,
  getpgid: 121,
  setsid: 112,
  connect: 42,
  shutdown: 48,
  getpeername: 52,
  bind: 49,
  listen: 50,
  getsockname: 51,
  socketpair: 53,
  setsockopt: 54,
  getsockopt: 55,
  epoll_ctl: 233,
  splice: 275,
  tee: 276,
  vmsplice: 278,
  timerfd_create: 283,
  timerfd_settime: 286,
  signalfd4: 289,
  eventfd2: 290,
  epoll_create1: 291,
  pipe2: 293,
  kcmp: 312,
  memfd_create: 319,
  unlink: 87,
  set_tid_address: 218,
  getdents64: 217,
  close_range: 436,
  pidfd_send_signal: 424,
  pidfd_open: 434,
  clone3: 435,
  pidfd_getfd: 438,
  process_madvise: 440,
  readlinkat: 267,
  open_by_handle_at: 304,
  name_to_handle_at: 303,
  inotify_init1: 294,
  inotify_add_watch: 254,
  inotify_rm_watch: 255,
} as const;

// ptrace requests
export const PTRACE = {
  PEEKDATA: 2,
  POKEDATA: 5,
  CONT: 7,
  KILL: 8,
  GETREGS: 12,
  SETREGS: 13,
  ATTACH: 16,
  DETACH: 17,
  SYSCALL: 24,
  SETOPTIONS: 0x4200,
  GETEVENTMSG: 0x4201,
  GETSIGINFO: 0x4202,
  GETREGSET: 0x4204,
  SETREGSET: 0x4205,
  SEIZE: 0x4206,
  INTERRUPT: 0x4207,
  LISTEN: 0x4208,
  PEEKSIGINFO: 0x4209,
  GETSIGMASK: 0x420a,
  SETSIGMASK: 0x420b,
  SECCOMP_GET_FILTER: 0x420c,
  SECCOMP_GET_METADATA: 0x420d,
} as const;

export const PTRACE_O = {
  TRACESYSGOOD: 1,
  EXITKILL: 1 << 20,
  /** The tracee's seccomp filters are not applied while this tracer holds it (CAP_SYS_ADMIN). */
  SUSPEND_SECCOMP: 1 << 21,
} as const;

// seccomp(2) and the filters PTRACE_SECCOMP_GET_FILTER hands out
export const SECCOMP_MODE_STRICT = 1;
export const SECCOMP_MODE_FILTER = 2;
export const SECCOMP_SET_MODE_STRICT = 0;
export const SECCOMP_SET_MODE_FILTER = 1;
export const SECCOMP_FILTER_FLAG_TSYNC = 1;
export const SECCOMP_FILTER_FLAG_LOG = 2;
export const SECCOMP_FILTER_FLAG_SPEC_ALLOW = 4;
/** BPF_MAXINSNS: the longest classic BPF program the kernel takes. */
export const SECCOMP_MAX_INSNS = 4096;
export const SOCK_FILTER_SIZE = 8;
export const SECCOMP_METADATA_SIZE = 16;
export const SECCOMP_RET_ACTION_FULL = 0xffff0000;
export const SECCOMP_RET_USER_NOTIF = 0x7fc00000;
export const CAP_SYS_ADMIN = 21;

export const PTRACE_EVENT_STOP = 128;
export const PTRACE_PEEKSIGINFO_SHARED = 1;
export const SIGINFO_SIZE = 128;

export const NT_PRSTATUS = 1;
export const NT_X86_XSTATE = 0x202;

// waitpid
export const WNOHANG = 1;
export const __WALL = 0x40000000;

// signals
export const SIGKILL = 9;
export const SIGTRAP = 5;
export const SIGSTOP = 19;
export const SIGCONT = 18;
export const NSIG = 64;

/** Offsets (in u64 words) of struct user_regs_struct, 27 words = 216 bytes. */
export const REG_NAMES = [
  'r15', 'r14', 'r13', 'r12', 'rbp', 'rbx', 'r11', 'r10', 'r9', 'r8',
  'rax', 'rcx', 'rdx', 'rsi', 'rdi', 'orig_rax', 'rip', 'cs', 'eflags', 'rsp',
  'ss', 'fs_base', 'gs_base', 'ds', 'es', 'fs', 'gs',
] as const;
export type RegName = (typeof REG_NAMES)[number];
export const USER_REGS_SIZE = REG_NAMES.length * 8;
export const REG_OFFSET: Record<RegName, number> = Object.fromEntries(
  REG_NAMES.map((n, i) => [n, i * 8]),
) as Record<RegName, number>;

/** Kernel syscall-restart return codes seen in rax of a task stopped in a syscall. */
export const ERESTARTSYS = 512;
export const ERESTARTNOINTR = 513;
export const ERESTARTNOHAND = 514;
export const ERESTART_RESTARTBLOCK = 516;

/** struct sigaction as the kernel's rt_sigaction sees it (not glibc's). */
export const KSIGACTION_SIZE = 32; // handler, flags, restorer, mask (8 bytes)
export const STACK_T_SIZE = 24; // ss_sp, ss_flags (int + pad), ss_size

// mmap
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;
export const MAP_SHARED = 1;
export const MAP_PRIVATE = 2;
export const MAP_ANONYMOUS = 0x20;

// PAGEMAP_SCAN (linux/fs.h, 6.7+)
export const PAGEMAP_SCAN = 0xc0606610;
export const PM_SCAN_ARG_SIZE = 96;
export const PAGE_REGION_SIZE = 24;
export const PAGE_IS = {
  WPALLOWED: 1 << 0,
  WRITTEN: 1 << 1,
  FILE: 1 << 2,
  PRESENT: 1 << 3,
  SWAPPED: 1 << 4,
  PFNZERO: 1 << 5,
  HUGE: 1 << 6,
  SOFT_DIRTY: 1 << 7,
  /** A guard region page (MADV_GUARD_INSTALL), 6.16+: probe with scanKnowsGuard(). */
  GUARD: 1 << 8,
} as const;
export const PM_SCAN_WP_MATCHING = 1 << 0;
export const PM_SCAN_CHECK_WPASYNC = 1 << 1;
/** Field offsets of struct pm_scan_arg (12 x u64). */
export const PM_SCAN = {
  size: 0, flags: 8, start: 16, end: 24, walk_end: 32, vec: 40, vec_len: 48,
  max_pages: 56, category_inverted: 64, category_mask: 72,
  category_anyof_mask: 80, return_mask: 88,
} as const;

// userfaultfd (used by incremental tracking)
export const UFFD_API = 0xaa;
export const UFFDIO_API = 0xc018aa3f;
export const UFFDIO_REGISTER = 0xc020aa00;
export const UFFDIO_UNREGISTER = 0x8010aa01;
export const UFFDIO_WRITEPROTECT = 0xc018aa06;
export const UFFDIO_REGISTER_MODE_WP = 1 << 1;
export const UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0;
export const UFFDIO_COPY = 0xc028aa03;
export const UFFDIO_ZEROPAGE = 0xc020aa04;
export const UFFDIO_WAKE = 0x8010aa02;
export const UFFDIO_REGISTER_MODE_MISSING = 1 << 0;
export const UFFD_FEATURE = {
  EVENT_FORK: 1 << 1,
  EVENT_REMAP: 1 << 2,
  EVENT_REMOVE: 1 << 3,
  EVENT_UNMAP: 1 << 6,
  WP_HUGETLBFS_SHMEM: 1 << 12,
  WP_UNPOPULATED: 1 << 13,
  WP_ASYNC: 1 << 15,
} as const;
export const UFFD_USER_MODE_ONLY = 1;
/** struct uffd_msg: 32 bytes; the event code is its first byte. */
export const UFFD_MSG_SIZE = 32;
export const UFFD_EVENT = {
  PAGEFAULT: 0x12,
  FORK: 0x13,
  REMAP: 0x14,
  REMOVE: 0x15,
  UNMAP: 0x16,
} as const;

// open flags
export const O_CLOEXEC = 0o2000000;
export const O_NONBLOCK = 0o4000;

export const IOV_MAX = 1024;
export const IOVEC_SIZE = 16;

export const PTRACE_GET_RSEQ_CONFIGURATION = 0x420f;
export const RSEQ_CONFIG_SIZE = 24;

export const PR = {
  GET_PDEATHSIG: 2,
  GET_DUMPABLE: 3,
  SET_MM: 35,
  PR_SET_MM_MAP: 14,
  GET_CHILD_SUBREAPER: 37,
  GET_NO_NEW_PRIVS: 39,
  GET_TID_ADDRESS: 40,
  GET_THP_DISABLE: 42,
  CAPBSET_DROP: 24,
  GET_SECUREBITS: 27,
  SET_SECCOMP: 22,
  SET_SECUREBITS: 28,
  CAP_AMBIENT: 47,
} as const;

export const PR_CAP_AMBIENT_RAISE = 2;
export const PR_CAP_AMBIENT_CLEAR_ALL = 4;
/** Keeps every capability across uid changes (no setuid fix-up at all). */
export const SECBIT_NO_SETUID_FIXUP = 1 << 2;
export const LINUX_CAPABILITY_VERSION_3 = 0x20080522;

export const MAP_FIXED = 0x10;
export const MAP_GROWSDOWN = 0x100;
export const MAP_NORESERVE = 0x4000;
export const MAP_FIXED_NOREPLACE = 0x100000;
export const MREMAP_MAYMOVE = 1;
export const MREMAP_FIXED = 2;
export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_ACCMODE = 3;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_NOCTTY = 0o400;
export const O_TRUNC = 0o1000;
export const O_APPEND = 0o2000;
export const AT_FDCWD = -100;
export const SEEK_SET = 0;
export const SS_ONSTACK = 1;
export const SS_DISABLE = 2;
export const CLONE_PARENT = 0x8000;
export const CLONE_VM = 0x100;
export const CLONE_FS = 0x200;
export const CLONE_FILES = 0x400;
export const CLONE_SIGHAND = 0x800;
export const CLONE_THREAD = 0x10000;
export const CLONE_SYSVSEM = 0x40000;
/** What pthread_create asks for, less the TLS and tid pointers tsnap sets per thread itself. */
export const CLONE_THREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
export const CLONE_ARGS_SIZE = 88; // clone_args v2 (set_tid, set_tid_size, cgroup)
export const PTRACE_EVENT_FORK = 1;
export const PTRACE_EVENT_CLONE = 3;
export const PTRACE_O_TRACEFORK = 2;
export const PTRACE_O_TRACECLONE = 8;
export const PR_SET_NAME = 15;
export const PR_SET_PDEATHSIG = 1;
export const PR_SET_DUMPABLE = 4;
export const PR_SET_CHILD_SUBREAPER = 36;
export const PR_SET_NO_NEW_PRIVS = 38;
export const PR_SET_THP_DISABLE = 41;
export const PRCTL_MM_MAP_SIZE = 104;
export const EINTR = 4;

// fcntl commands and file-kind constants used for fds (x86-64 values).
export const F_DUPFD_CLOEXEC = 1030;
export const F_GETFD = 1;
export const F_SETFD = 2;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const F_SETSIG = 10;
export const F_GETSIG = 11;
export const F_SETOWN_EX = 15;
export const F_GETOWN_EX = 16;
export const F_SETLEASE = 1024;
export const F_GETLEASE = 1025;
export const F_UNLCK = 2;
export const F_SETPIPE_SZ = 1031;
export const F_GETPIPE_SZ = 1032;
export const FD_CLOEXEC = 1;
export const SPLICE_F_NONBLOCK = 2;
export const SPLICE_F_MOVE = 1;
export const KCMP_FILE = 0;
export const KCMP_FILES = 2;
export const KCMP_EPOLL_TFD = 7;
export const EFD_SEMAPHORE = 1;
export const EPOLL_CTL_ADD = 1;
/** _IOW('T', 0, u64): sets a timerfd's pending expirations (CONFIG_CHECKPOINT_RESTORE). */
export const TFD_IOC_SET_TICKS = 0x40085400;
export const SOL_SOCKET = 1;
export const SO = { REUSEADDR: 2, TYPE: 3, SNDBUF: 7, RCVBUF: 8, KEEPALIVE: 9, REUSEPORT: 15, ACCEPTCONN: 30, PROTOCOL: 38, DOMAIN: 39 } as const;
export const IPPROTO_IPV6 = 41;
export const IPV6_V6ONLY = 26;
export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_TYPE_MASK = 0xf;
export const SIGCHLD = 17;

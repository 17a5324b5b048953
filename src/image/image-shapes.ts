/**
 * The shapes and ranges of every metadata document of an image
 * (formats/schema.ts says what the fields mean). Ranges are what a Linux
 * x86-64 process can have, so that nothing downstream meets a value it was
 * not written for: addresses in the user half (or [vsyscall]), pids within
 * PID_MAX_LIMIT, fds within fs.nr_open's ceiling, binary records of their
 * kernel sizes.
 */
import { isSysvShmPath } from '../proc/sysvipc.js';
import { FORMAT_VERSION, FORMAT_VERSION_SPLIT, FileKind } from '../../formats/schema.js';
import {
  type Shape, int, num, big, bool, str, oneOf, bin, nullable, arr, tuple, obj, opt, record, refine, isPlainObject,
  U32, I32, SAFE, U64,
} from './shape.js';
import { PAGE_SIZE } from '../sys/uapi.js';

const PID = int(1, 1 << 22);
const PID_OR_0 = int(0, 1 << 22);
/** The user half of the x86-64 address space (4-level paging). */
export const USER_END = 2 ** 47;
const ADDR = int(0, USER_END);
const FD = int(0, 1 << 20);
const UUID = str(36, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i);
const PATH = str(4096);
const TIME = num(-1e16, 1e16);
const I64_OR_U64 = big(-(1n << 63n), (1n << 64n) - 1n);
const SIGINFOS = arr(bin(128, 128), 1 << 16);
const SOCKADDR = bin(0, 128);
const BYTES = bin();

const FILE_ID = { dev: SAFE, ino: SAFE, size: SAFE, mtimeMs: TIME };
const SIGNO_OR_0 = int(0, 64);

/** A thread's credentials (tsnap 0.2+; a zombie's too, securebits 0). */
const CREDS = obj({
  uid: arr(U32, 4, 4), gid: arr(U32, 4, 4), groups: arr(U32, 65536),
  capInh: U64, capPrm: U64, capEff: U64, capBnd: U64, capAmb: U64,
  securebits: U32, noNewPrivs: int(0, 1),
});

const multipleOf = (s: Shape, unit: number): Shape => refine<number>(s, (v) => (v % unit === 0 ? null : `${v} is not a multiple of ${unit}`));

export const INVENTORY: Shape = refine<{ kind: string; parent: unknown }>(obj({
  formatVersion: oneOf(FORMAT_VERSION, FORMAT_VERSION_SPLIT),
  imageId: UUID,
  createdAt: str(64),
  tool: obj({ name: str(64), version: str(64) }),
  kind: oneOf('full', 'delta'),
  parent: nullable(obj({ path: str(4096, /./), imageId: UUID })),
  pid: PID,
  arch: str(32),
  kernel: str(256),
  pageSize: oneOf(PAGE_SIZE),
  chunkSize: multipleOf(int(PAGE_SIZE, 64 << 20), PAGE_SIZE),
  compression: oneOf('none', 'lz4'),
  files: record(obj({ length: SAFE, crc32: U32 }), 16),
  contents: opt(oneOf('dump', 'predump')),
  tracking: opt(nullable(obj({ holderPid: PID, holderStartTime: SAFE, targetPid: PID, targetStartTime: SAFE, mmId: str(64) }))),
  startTime: opt(SAFE),
}), (inv) => (inv.kind === 'delta' && inv.parent === null ? 'a delta image without a parent' : null));

const VMA_FIELDS = {
  start: int(0, 2 ** 64),
  end: int(0, 2 ** 64),
  prot: int(0, 7),
  shared: bool,
  pgoff: SAFE,
  path: PATH,
  special: oneOf('heap', 'stack', 'vdso', 'vvar', 'vvar_vclock', 'vsyscall', null),
  file: nullable(obj({ ...FILE_ID, devMajor: U32, devMinor: U32, deleted: bool })),
  dumped: bool,
  // smaps VmFlags tokens restore sets again (VMA_RESTORED_FLAGS): two letters each.
  flags: opt(arr(str(2, /^[a-z]{2}$/), 64)),
  guards: opt(arr(tuple(ADDR, ADDR), 1 << 20)),
};
/** Every VMA field checked by the generic walk (tests compare the fast path with it). */
export const VMA_GENERIC = obj(VMA_FIELDS);
const VMA_KEYS = Object.keys(VMA_FIELDS);
const SPECIALS = new Set(['heap', 'stack', 'vdso', 'vvar', 'vvar_vclock', 'vsyscall']);
const isInt = (x: unknown, min: number, max: number) => typeof x === 'number' && Number.isInteger(x) && x >= min && x <= max;

/**
 * Whether VMA_GENERIC accepts `v`, for the common VMA (no file, no guards),
 * by plain property loads: the generic check's `o[k]` over every map of
 * the image is a megamorphic keyed load per field (~150 000 for 10 000
 * VMAs, ~40% of readChain's shape time in a profile). False sends `v` to
 * the generic check, which accepts it or names what is wrong, so both
 * accept exactly the same VMAs. Own properties: the caller makes sure
 * Object.prototype has none of these keys (then a key present is own).
 */
function plainVmaOk(v: unknown): boolean {
  if (!isPlainObject(v)) return false;
  const o = v as { start: unknown; end: unknown; prot: unknown; shared: unknown; pgoff: unknown; path: unknown; special: unknown; file: unknown; dumped: unknown; flags?: unknown; guards?: unknown };
  if (!isInt(o.start, 0, 2 ** 64) || !isInt(o.end, 0, 2 ** 64) || !isInt(o.prot, 0, 7) || typeof o.shared !== 'boolean' || !isInt(o.pgoff, 0, Number.MAX_SAFE_INTEGER)) return false;
  const path = o.path;
  if (typeof path !== 'string' || path.length > 4096 || path.includes('\0')) return false;
  const sp = o.special;
  if (sp !== null && !(typeof sp === 'string' && SPECIALS.has(sp))) return false;
  if (o.file !== null || typeof o.dumped !== 'boolean' || o.guards !== undefined) return false;
  const flags = o.flags;
  if (flags === undefined) return true;
  if (!Array.isArray(flags) || flags.length > 64) return false;
  for (let i = 0; i < flags.length; i++) {
    const t = flags[i];
    if (typeof t !== 'string' || t.length !== 2) return false;
    const a = t.charCodeAt(0);
    const b = t.charCodeAt(1);
    if (a < 97 || a > 122 || b < 97 || b > 122) return false;
  }
  return true;
}

/** One VMA: the fast path, else the generic walk. */
export const VMA: Shape = (v, at) => { if (!plainVmaOk(v)) VMA_GENERIC(v, at); };
const VMA_LIST = arr(VMA, 1 << 20);
const VMA_LIST_GENERIC = arr(VMA_GENERIC, 1 << 20);
/** A key on Object.prototype would read as present where the generic check finds it missing (not own). */
const VMA_LIST_CHECK: Shape = (v, at) => (VMA_KEYS.some((k) => k in Object.prototype) ? VMA_LIST_GENERIC : VMA_LIST)(v, at);

interface VmaLike { start: number; end: number; special: string | null; dumped: boolean; guards?: [number, number][] }

/** Sorted, disjoint, page-aligned; above the user half only [vsyscall], which is never dumped. */
export const VMAS: Shape = refine<VmaLike[]>(VMA_LIST_CHECK, (vmas) => {
  let prevEnd = 0;
  // Named only when wrong, and nothing allocated per VMA otherwise (no closure, no empty guard list): 10 000 of them.
  const at = (v: VmaLike) => `VMA at 0x${v.start.toString(16)}`;
  for (const v of vmas) {
    if (v.start % PAGE_SIZE !== 0 || v.end % PAGE_SIZE !== 0 || v.start >= v.end) return `${at(v)}: misaligned or empty`;
    if (v.start < prevEnd) return `${at(v)}: VMAs overlap or are not sorted`;
    if (v.end > USER_END && (v.special !== 'vsyscall' || v.dumped)) return `${at(v)}: outside the user address space`;
    if (v.guards) {
      for (const [s, e] of v.guards) {
        if (s % PAGE_SIZE !== 0 || e % PAGE_SIZE !== 0 || s >= e || s < v.start || e > v.end) return `${at(v)}: guard region 0x${s.toString(16)}-0x${e.toString(16)} is not a page range inside it`;
      }
    }
    prevEnd = v.end;
  }
  return null;
});

const SOCKET_FIELDS = {
  family: int(0, 64),
  type: int(0, 1 << 20),
  protocol: int(0, 1 << 16),
  state: oneOf('listening', 'bound', 'pair', 'established', 'peer-closed'),
  local: SOCKADDR,
  peer: nullable(SOCKADDR),
  backlog: I32,
  reuseAddr: bool,
  reusePort: bool,
  v6Only: bool,
  ino: opt(SAFE),
  peerIno: opt(SAFE),
  queued: opt(arr(BYTES, 1 << 20)),
  dir: opt(PATH),
  peerDir: opt(PATH),
  reset: opt(bool),
  shutdown: opt(int(0, 3)),
  filter: opt(bin(8, 4096 * 8, 8)),
  filterLocked: opt(bool),
  tcp: opt(obj({
    local: SOCKADDR,
    peer: SOCKADDR,
    recvSeq: U32,
    recvQueue: BYTES,
    sendSeq: U32,
    sendQueue: BYTES,
    mss: int(0, 65535),
    sack: bool,
    wscale: nullable(obj({ snd: int(0, 15), rcv: int(0, 15) })),
    timestamp: nullable(U32),
    window: bin(0, 64),
    state: opt(oneOf(4, 5, 8, 9, 11)),
    sndbuf: opt(int(0, 0x7fffffff)),
    rcvbuf: opt(int(0, 0x7fffffff)),
    lock: opt(str(32, /^[0-9a-f]+$/)),
  })),
  options: opt(arr(tuple(int(0, 1 << 16), int(0, 1 << 16), bin(0, 64)), 64)),
  pathFile: opt(obj({ mode: int(0, 0o7777), uid: U32, gid: U32 })),
};
const SOCKET = obj(SOCKET_FIELDS);

/**
 * A deleted file's inode and data (--ghost-limit bounds the data a dump
 * stores; a reader takes any size a file can have).
 */
const EXTENTS = arr(obj({ offset: SAFE, data: bin(0, 2 ** 32 - 1) }), 1 << 20);
const GHOST = {
  size: SAFE, mode: int(0, 0o7777), uid: U32, gid: U32, atimeMs: opt(TIME), mtimeMs: opt(TIME),
  extents: nullable(EXTENTS),
  alias: opt(PATH),
};

const fdImage = (socket: Shape): Shape => obj({
  fd: FD,
  kind: oneOf('file', 'dir', 'devnull', 'tty', 'pipe', 'fifo', 'socket', 'anon_inode', 'chardev', 'blockdev', 'memfd', 'eventfd', 'epoll', 'timerfd', 'signalfd', 'other'),
  link: PATH,
  path: nullable(PATH),
  flags: U32,
  pos: SAFE,
  file: nullable(obj({ ...FILE_ID, mode: U32, rdev: SAFE, deleted: bool })),
  ofd: opt(SAFE),
  pipe: opt(obj({ id: SAFE, capacity: int(0, 1 << 30), data: nullable(BYTES), closedEnd: opt(oneOf('read', 'write')) })),
  eventfd: opt(obj({ count: U64, semaphore: bool })),
  epoll: opt(obj({ targets: arr(obj({ fd: FD, events: U32, data: U64, via: opt(FD) }), 1 << 20) })),
  timerfd: opt(obj({ clockid: I32, valueNs: I64_OR_U64, intervalNs: I64_OR_U64, ticks: U64 })),
  signalfd: opt(obj({ mask: U64 })),
  socket: opt(socket),
  fifo: opt(obj({ capacity: int(0, 1 << 30), data: BYTES, ghost: opt(obj({ mode: int(0, 0o7777), uid: U32, gid: U32 })) })),
  memfd: opt(obj({ name: str(255), data: BYTES, seals: U32, mode: opt(int(0, 0o7777)) })),
  pidfd: opt(obj({ pid: int(-1, 1 << 22), ino: SAFE, leader: opt(PID) })),
  symlink: opt(obj({ target: PATH, ino: SAFE, uid: U32, gid: U32 })),
  inotify: opt(obj({ watches: arr(obj({ wd: int(1, 0x7fffffff), mask: U32, dev: SAFE, ino: SAFE, path: nullable(PATH), via: opt(FD), handle: opt(bin(0, 128)) }), 1 << 20) })),
  nsfs: opt(obj({ file: oneOf('cgroup', 'ipc', 'mnt', 'net', 'pid', 'pid_for_children', 'time', 'time_for_children', 'user', 'uts'), ino: SAFE })),
  owner: opt(obj({ type: int(0, 2), pid: PID_OR_0, signal: SIGNO_OR_0 })),
  lease: opt(int(0, 1)),
  tty: opt(obj({
    type: oneOf('master', 'slave', 'ctty', 'stdio'),
    dup: opt(bool),
    index: int(-1, (1 << 23) - 1),
    hungUp: opt(bool),
    exclusive: opt(bool),
    pty: opt(obj({
      termios: bin(44, 44), lockedTermios: bin(36, 36), winsize: bin(8, 8), locked: bool, packet: bool, slaveClosed: bool,
      input: bin(0, 1 << 20), output: bin(0, 1 << 20), session: PID_OR_0, fgPgid: PID_OR_0,
    })),
  })),
  ghost: opt(obj(GHOST)),
});

/** A file in flight in a unix socket: a socket among them has no files in flight itself (dump refuses). */
const INFLIGHT_FD = fdImage(SOCKET);

interface ScmLike { messages: { fds: number[] }[]; files: { fd: number }[] }

export const SCM = refine<ScmLike>(obj({
  messages: arr(obj({
    data: BYTES,
    fds: arr(FD, 253), // SCM_MAX_FD
    creds: obj({ pid: PID_OR_0, uid: U32, gid: U32 }),
  }), 1 << 20),
  files: arr(INFLIGHT_FD, 1 << 20),
}), (scm) => {
  const files = new Set(scm.files.map((f) => f.fd));
  for (const m of scm.messages) {
    for (const fd of m.fds) if (!files.has(fd)) return `a message in flight names fd ${fd}, which is not among the files in flight`;
  }
  return null;
});

const FD_IMAGE = fdImage(obj({ ...SOCKET_FIELDS, scm: opt(SCM) }));

/**
 * A thread's XSAVE area as PTRACE_GETREGSET(NT_X86_XSTATE) gives it: the
 * 512-byte legacy area (whose software-reserved bytes at 464 hold the
 * kernel's XCR0), the 64-byte header, then the enabled components, each a
 * multiple of 8 bytes. The kernel writes the header in the standard
 * format (XCOMP_BV and the reserved bytes zero) and XSTATE_BV within XCR0.
 * Which length a set of features takes depends on the CPU (restore
 * compares it with this one's).
 */
const XSTATE = refine<Buffer>(bin(512, 1 << 16, 8), (b) => {
  if (b.length < 576) return null;
  const xcr0 = b.readBigUInt64LE(464);
  const bv = b.readBigUInt64LE(512);
  if ((bv & ~xcr0) !== 0n) return `XSAVE header: XSTATE_BV 0x${bv.toString(16)} names features outside XCR0 0x${xcr0.toString(16)}`;
  if (b.readBigUInt64LE(520) !== 0n || b.subarray(528, 576).some((x) => x !== 0)) return 'XSAVE header: not in the standard format (XCOMP_BV or reserved bytes set)';
  return null;
});

const THREAD = obj({
  tid: PID,
  regs: bin(216, 216),
  xstate: XSTATE,
  sigmask: U64,
  sigaltstack: obj({ sp: U64, flags: int(-(2 ** 31), 2 ** 32 - 1), size: U64 }),
  syscallRestart: nullable(obj({ nr: SAFE, code: oneOf(512, 513, 514, 516) })),
  clearChildTid: U64,
  robustList: obj({ head: U64, len: U64 }),
  rseq: nullable(obj({ pointer: U64, size: int(0, 1 << 16), signature: U32, flags: U32 })),
  pendingSignals: SIGINFOS,
  creds: opt(CREDS),
  // BPF_MAXINSNS instructions of 8 bytes; MAX_INSNS_PER_PATH (32768) bounds a thread's whole chain.
  seccomp: opt(refine<{ mode: number; filters: { prog: Buffer }[] }>(obj({
    mode: oneOf(1, 2),
    filters: arr(obj({ prog: bin(8, 4096 * 8, 8), flags: oneOf(0, 2) }), 32768 / 4),
  }), (s) => (s.mode === 2 && s.filters.length === 0 ? 'filter mode without filters' : null))),
});

const unique = <T>(items: T[], key: (t: T) => number, what: string): string | null => {
  const seen = new Set<number>();
  for (const t of items) {
    const k = key(t);
    if (seen.has(k)) return `${what} ${k} appears twice`;
    seen.add(k);
  }
  return null;
};

interface ProcessLike {
  pid: number;
  threads: { tid: number }[];
  fds: { fd: number; socket?: { scm?: { files: { fd: number }[] } } }[];
  mm: { vmas: { start: number; end: number; path: string; file: { dev: number; ino: number } | null }[] };
  memfds?: { dev: number; ino: number }[];
  sysvShm?: { shmid: number; size: number; data: Buffer }[];
  mappedGhosts?: { dev: number; ino: number }[];
  aioRings?: { start: number; end: number; ring: Buffer }[];
}

export const PROCESS: Shape = refine<ProcessLike>(obj({
  pid: PID,
  ppid: PID_OR_0,
  pgid: PID_OR_0,
  sid: PID_OR_0,
  comm: str(64),
  exe: obj({ path: PATH, ...FILE_ID }),
  cwd: PATH,
  cwdFile: opt(obj({ dev: SAFE, ino: SAFE })),
  root: PATH,
  umask: int(0, 0o777),
  personality: U32,
  oomScoreAdj: opt(int(-1000, 1000)),
  loginuid: opt(U32),
  stopSignal: opt(oneOf(19, 20, 21, 22)),
  ctty: opt(obj({ rdev: SAFE, fgPgid: PID_OR_0 })),
  creds: obj({ uid: arr(U32, 4, 4), gid: arr(U32, 4, 4) }),
  startTime: SAFE,
  rlimits: arr(obj({ resource: int(0, 15), name: str(32), cur: U64, max: U64 }), 16),
  threads: arr(THREAD, 1 << 16, 1),
  signals: obj({
    actions: arr(obj({ signo: int(1, 64), handler: U64, flags: U64, restorer: U64, mask: U64 }), 64),
    sharedPending: SIGINFOS,
  }),
  mm: obj({
    startCode: ADDR, endCode: ADDR, startData: ADDR, endData: ADDR, startBrk: ADDR, brk: ADDR, startStack: ADDR,
    argStart: ADDR, argEnd: ADDR, envStart: ADDR, envEnd: ADDR,
    auxv: bin(16, 1 << 16, 16),
    vmas: VMAS,
  }),
  fds: arr(FD_IMAGE, 1 << 20),
  memfds: opt(arr(obj({ dev: SAFE, ino: SAFE, name: str(255), data: BYTES, seals: U32, mode: opt(int(0, 0o7777)) }), 1 << 16)),
  sysvShm: opt(arr(obj({ shmid: int(0, 2 ** 31 - 1), key: I32, size: int(1, 2 ** 40), mode: int(0, 0o7777), uid: U32, gid: U32, data: BYTES }), 1 << 12)),
  aioRings: opt(arr(obj({ start: ADDR, end: ADDR, ring: bin(PAGE_SIZE, 1 << 26, PAGE_SIZE) }), 1 << 16)),
  mappedGhosts: opt(arr(obj({ dev: SAFE, ino: SAFE, path: PATH, ...GHOST, extents: EXTENTS }), 1 << 16)),
  itimers: opt(arr(obj({ which: int(0, 2), valueUs: SAFE, intervalUs: SAFE }), 3)),
  posixTimers: opt(arr(obj({
    id: int(0, 2 ** 31 - 1), clockid: I32, signo: int(0, 64), value: U64, notify: oneOf('signal', 'thread', 'none'),
    tid: PID_OR_0, valueNs: I64_OR_U64, intervalNs: I64_OR_U64,
  }), 1 << 16)),
  prctl: obj({ dumpable: U32, pdeathsig: int(0, 64), childSubreaper: U32, noNewPrivs: U32, thpDisable: U32, membarrier: opt(U32) }),
}), (p) => {
  if (p.threads[0].tid !== p.pid) return `the first thread is ${p.threads[0].tid}, not the main thread ${p.pid}`;
  // Files in flight take numbers of their own while restore queues them again.
  const inflight = p.fds.flatMap((f) => f.socket?.scm?.files ?? []);
  const dup = unique(p.threads, (t) => t.tid, 'thread') ?? unique([...p.fds, ...inflight], (f) => f.fd, 'fd');
  if (dup) return dup;
  // A mapped memfd is recreated from the contents the image holds.
  for (const v of p.mm.vmas) {
    const f = v.file;
    if (f && v.path.startsWith('/memfd:') && !p.memfds?.some((m) => m.dev === f.dev && m.ino === f.ino)) {
      return `the VMA at 0x${v.start.toString(16)} maps ${v.path} but the image does not hold its contents`;
    }
    if (f && isSysvShmPath(v.path) && !p.sysvShm?.some((m) => m.shmid === f.ino)) {
      return `the VMA at 0x${v.start.toString(16)} attaches SysV shm ${f.ino} but the image does not hold the segment`;
    }
  }
  for (const m of p.sysvShm ?? []) {
    if (m.data.length !== m.size) return `SysV shm ${m.shmid} holds ${m.data.length} bytes for a size of ${m.size}`;
  }
  for (const v of p.mm.vmas) {
    if (v.path === '/[aio]' && !p.aioRings?.some((r) => r.start === v.start)) return `the VMA at 0x${v.start.toString(16)} is an aio ring the image does not hold`;
  }
  for (const r of p.aioRings ?? []) {
    if (r.ring.length !== r.end - r.start || !p.mm.vmas.some((v) => v.start === r.start && v.end === r.end && v.path === '/[aio]')) return `the aio ring at 0x${r.start.toString(16)} does not match a VMA of the image`;
  }
  for (const g of p.mappedGhosts ?? []) {
    if (!p.mm.vmas.some((v) => v.file?.dev === g.dev && v.file.ino === g.ino)) return `the image holds a deleted mapped file (inode ${g.ino}) that no VMA maps`;
  }
  return null;
});

const CHUNK_FIELDS = [SAFE, int(1, 2 * (64 << 20)), multipleOf(int(PAGE_SIZE, 64 << 20), PAGE_SIZE), int(0, 1), U32];
const CHUNK = tuple(...CHUNK_FIELDS);
/** Format 2: a sixth entry, the pages file (only 1: a chunk of `pages` has five). */
const CHUNK_IN_FILE = tuple(...CHUNK_FIELDS, int(1, 1));
/** A pagemap's runs, [start, pages, where, chunk, offset] each: the shape that names what is wrong. */
export const RUNS_GENERIC: Shape = arr(tuple(multipleOf(ADDR, PAGE_SIZE), int(1, USER_END / PAGE_SIZE), int(0, 2), SAFE, multipleOf(SAFE, PAGE_SIZE)), 1 << 24);
const intIn = (x: unknown, min: number, max: number): boolean => typeof x === 'number' && Number.isInteger(x) && x >= min && x <= max;
/**
 * RUNS_GENERIC's conditions, inline: a chain's pagemaps hold tens of
 * thousands of runs, checked once per restore in cold code, where six
 * closure calls per run cost ~1 us. Whatever this does not pass goes
 * through RUNS_GENERIC, which accepts or refuses (and names the field)
 * exactly as it always did, so the result is RUNS_GENERIC's.
 */
export const RUNS: Shape = (v, at) => {
  if (Array.isArray(v) && v.length <= 1 << 24) {
    let ok = true;
    for (let i = 0; ok && i < v.length; i++) {
      const r: unknown = v[i];
      ok = Array.isArray(r) && r.length === 5
        && intIn(r[0], 0, USER_END) && r[0] % PAGE_SIZE === 0
        && intIn(r[1], 1, USER_END / PAGE_SIZE)
        && intIn(r[2], 0, 2)
        && intIn(r[3], 0, Number.MAX_SAFE_INTEGER)
        && intIn(r[4], 0, Number.MAX_SAFE_INTEGER) && r[4] % PAGE_SIZE === 0;
    }
    if (ok) return;
  }
  RUNS_GENERIC(v, at);
};
/** [fileOffset, storedLength, rawLength, codec, crc32(, file)]; [start, pages, where, chunk, offset]. */
export const PAGEMAP: Shape = obj({
  chunks: arr((v, at) => (Array.isArray(v) && v.length === 6 ? CHUNK_IN_FILE : CHUNK)(v, at), 1 << 24),
  runs: RUNS,
  vmas: opt(VMAS),
});

const US = num(0, 1e16);
export const STATS: Shape = obj({
  freezeUs: US, frozenUs: US, memdumpUs: US, totalUs: US,
  vmas: SAFE, pagesScanned: SAFE, pagesWritten: SAFE, pagesZero: SAFE, pagesSlowPath: SAFE,
  bytesRaw: SAFE, bytesStored: SAFE, throughputMiBps: num(0, 1e12),
  compression: oneOf('none', 'lz4'),
  vmasFresh: opt(SAFE), vmasTracked: opt(SAFE), vmasUntracked: opt(SAFE), pagesVanished: opt(SAFE),
  cow: opt(obj({
    pagesProtected: SAFE, pagesFrozenCopy: SAFE, faults: SAFE, faultPages: SAFE, faultsDeferred: SAFE,
    faultMeanUs: US, faultMaxUs: US, copyUs: US, armUs: US,
    preStopUs: opt(US), prearmUs: opt(US), earlyFaults: opt(SAFE), pagesReprotected: opt(SAFE),
  })),
  frozenParts: opt(obj({ stateUs: US, layoutUs: US, processUs: US, scanUs: US, remoteSyscalls: SAFE, guardianCalls: SAFE })),
  splice: opt(obj({ pipes: SAFE, pipeBytes: SAFE, trips: SAFE, pagesSpliced: SAFE, fillUs: US, spliceUs: US, crcUs: US, crcAfterUs: US, crcOn: opt(oneOf('pool', 'thread', 'inline')), refusedErrno: opt(SAFE), files: opt(int(1, 2)), poolWaitUs: opt(US), crcsSpliced: opt(SAFE) })),
});

interface MemberLike { pid: number; dir: string; zombie?: unknown }

export const TREE: Shape = refine<{ root: number; processes: MemberLike[] }>(obj({
  formatVersion: oneOf(FORMAT_VERSION),
  createdAt: str(64),
  root: PID,
  contents: oneOf('dump', 'predump'),
  processes: arr(obj({
    pid: PID,
    ppid: PID_OR_0,
    // One directory of the tree: never a path that leads out of it.
    dir: str(255, /^(|(?!\.\.?$)[^/]+)$/),
    zombie: opt(obj({ status: int(0, 0xffff), pgid: PID_OR_0, sid: PID_OR_0, creds: opt(CREDS) })),
    imageId: opt(UUID),
    filesShared: opt(bool),
  }), 1 << 16, 1),
}), (t) => {
  const dup = unique(t.processes, (m) => m.pid, 'process');
  if (dup) return dup;
  for (const m of t.processes) if ((m.dir === '') !== (m.zombie !== undefined)) return `process ${m.pid}: a directory is required exactly for processes that are not zombies`;
  return t.processes[0].pid === t.root ? null : 'the manifest does not start with its root';
});

export const SHAPE_OF: Record<FileKind, Shape> = {
  [FileKind.Inventory]: INVENTORY,
  [FileKind.Process]: PROCESS,
  [FileKind.Pagemap]: PAGEMAP,
  [FileKind.Pages]: () => {},
  [FileKind.Stats]: STATS,
  [FileKind.Tree]: TREE,
};

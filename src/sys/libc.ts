/**
 * The koffi bindings to libc. Only src/sys imports this file: every other
 * module goes through the typed wrappers beside it, which turn -1/errno into
 * SysError. All calls are synchronous on purpose: ptrace requests are only
 * accepted from the thread that attached, which is Node's main thread.
 */
import { koffi } from './koffi.js';

const libc6 = koffi.load('libc.so.6');

/**
 * Each binding is made on its first call: koffi parses a prototype per
 * lib.func() (~5 ms of CPU for all of these at a CLI's start), and one
 * command calls only some of them. A binding is the same function to its
 * callers (`.async` included); a bad prototype fails at that first call.
 */
const lib = {
  func(...decl: unknown[]): unknown {
    let fn: ((...a: unknown[]) => unknown) & { async: (...a: unknown[]) => void } | undefined;
    const make = () => (fn ??= (libc6.func as (...d: unknown[]) => typeof fn)(...decl)!);
    const call = (...a: unknown[]): unknown => make()(...a);
    call.async = (...a: unknown[]): void => make().async(...a);
    return call;
  },
};

/** An integer argument koffi accepts for C integer types (a bigint for values past 2^53). */
type Int = number | bigint;
/** A pointer argument: a Buffer (its memory), an address, or NULL. */
type Ptr = Buffer | Int | null;
/**
 * What koffi returns for a C `long`: a number, or a bigint when the value
 * does not fit a double exactly. `int` returns are always numbers.
 */
type Long = number | bigint;

/** koffi's function objects are untyped: each binding states its own signature. */
function bind<F>(fn: unknown): F {
  return fn as F;
}

export const libc = {
  ptrace: bind<(request: number, pid: number, addr: Int, data: Int) => Long>(lib.func('long ptrace(int request, int pid, uintptr_t addr, uintptr_t data)')),
  /** ptrace with a buffer as data (GETREGS, SETREGS, GETSIGMASK, PEEKSIGINFO...). */
  ptraceBuf: bind<(request: number, pid: number, addr: Int, data: Buffer) => Long>(lib.func('ptrace', 'long', ['int', 'int', 'uintptr_t', 'void *'])),
  waitpid: bind<(pid: number, status: Buffer | null, options: number) => number>(lib.func('int waitpid(int pid, void *status, int options)')),
  processVmReadv: bind<(pid: number, local: Ptr, liovcnt: number, remote: Ptr, riovcnt: number, flags: number) => Long>(lib.func(
    'long process_vm_readv(int pid, void *local, unsigned long liovcnt, void *remote, unsigned long riovcnt, unsigned long flags)',
  )),
  processVmWritev: bind<(pid: number, local: Ptr, liovcnt: number, remote: Ptr, riovcnt: number, flags: number) => Long>(lib.func(
    'long process_vm_writev(int pid, void *local, unsigned long liovcnt, void *remote, unsigned long riovcnt, unsigned long flags)',
  )),
  ioctl: bind<(fd: number, request: Int, arg: Ptr) => number>(lib.func('int ioctl(int fd, unsigned long request, void *arg)')),
  syscall: bind<(nr: Int, a1: Int, a2: Int, a3: Int, a4: Int, a5: Int, a6: Int) => Long>(
    lib.func('long syscall(long nr, uintptr_t a1, uintptr_t a2, uintptr_t a3, uintptr_t a4, uintptr_t a5, uintptr_t a6)'),
  ),
  pread: bind<(fd: number, buf: Buffer, count: number, offset: Int) => Long>(lib.func('long pread(int fd, void *buf, size_t count, int64_t offset)')),
  pwrite: bind<(fd: number, buf: Buffer, count: number, offset: Int) => Long>(lib.func('long pwrite(int fd, void *buf, size_t count, int64_t offset)')),
  preadv: bind<(fd: number, iov: Ptr, iovcnt: number, offset: Int) => Long>(lib.func('long preadv(int fd, void *iov, int iovcnt, int64_t offset)')),
  kill: bind<(pid: number, sig: number) => number>(lib.func('int kill(int pid, int sig)')),
  socketpair: bind<(domain: number, type: number, protocol: number, sv: Buffer) => number>(lib.func('int socketpair(int domain, int type, int protocol, void *sv)')),
  send: bind<(fd: number, buf: Buffer, len: number, flags: number) => Long>(lib.func('long send(int fd, void *buf, size_t len, int flags)')),
  recv: bind<(fd: number, buf: Buffer, len: number, flags: number) => Long>(lib.func('long recv(int fd, void *buf, size_t len, int flags)')),
  sendmsg: bind<(fd: number, msg: Buffer, flags: number) => Long>(lib.func('long sendmsg(int fd, void *msg, int flags)')),
  recvmsg: bind<(fd: number, msg: Buffer, flags: number) => Long>(lib.func('long recvmsg(int fd, void *msg, int flags)')),
  read: bind<(fd: number, buf: Buffer, n: number) => Long>(lib.func('long read(int fd, void *buf, size_t n)')),
  close: bind<(fd: number) => number>(lib.func('int close(int fd)')),
  /** poll(); `.async` runs it on koffi's worker pool, for a wait that must not block the event loop. */
  poll: bind<{ (fds: Buffer, n: number, timeoutMs: number): number; async(fds: Buffer, n: number, timeoutMs: number, cb: (err: unknown, r: number) => void): void }>(
    lib.func('int poll(void *fds, unsigned long n, int timeout)'),
  ),
  /** `.async`: on koffi's worker pool (posixSpawnAsync). */
  posixSpawn: bind<{
    (pid: number[], path: string, fa: Buffer, attr: Buffer, argv: (string | null)[], envp: (string | null)[]): number;
    async(pid: number[], path: string, fa: Buffer, attr: Buffer, argv: (string | null)[], envp: (string | null)[], cb: (err: unknown, r: number) => void): void;
  }>(
    lib.func('int posix_spawn(_Out_ int *pid, const char *path, void *fa, void *attr, const char **argv, const char **envp)'),
  ),
  posixSpawnFileActionsInit: bind<(fa: Buffer) => number>(lib.func('int posix_spawn_file_actions_init(void *fa)')),
  posixSpawnFileActionsDestroy: bind<(fa: Buffer) => number>(lib.func('int posix_spawn_file_actions_destroy(void *fa)')),
  posixSpawnFileActionsAddClosefrom: bind<(fa: Buffer, from: number) => number>(lib.func('int posix_spawn_file_actions_addclosefrom_np(void *fa, int from)')),
  posixSpawnFileActionsAddDup2: bind<(fa: Buffer, fd: number, newfd: number) => number>(lib.func('int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)')),
  posixSpawnattrInit: bind<(attr: Buffer) => number>(lib.func('int posix_spawnattr_init(void *attr)')),
  posixSpawnattrDestroy: bind<(attr: Buffer) => number>(lib.func('int posix_spawnattr_destroy(void *attr)')),
  posixSpawnattrSetflags: bind<(attr: Buffer, flags: number) => number>(lib.func('int posix_spawnattr_setflags(void *attr, short flags)')),
  posixSpawnattrSetsigdefault: bind<(attr: Buffer, set: Buffer) => number>(lib.func('int posix_spawnattr_setsigdefault(void *attr, const void *set)')),
  posixSpawnattrSetschedpolicy: bind<(attr: Buffer, policy: number) => number>(lib.func('int posix_spawnattr_setschedpolicy(void *attr, int policy)')),
  posixSpawnattrSetschedparam: bind<(attr: Buffer, param: Buffer) => number>(lib.func('int posix_spawnattr_setschedparam(void *attr, const void *param)')),
  // Pointers stay koffi externals: koffi.view() reads and writes the attached segment.
  shmat: bind<(shmid: number, addr: Ptr, flags: number) => unknown>(lib.func('void *shmat(int shmid, void *addr, int flags)')),
  shmdt: bind<(addr: unknown) => number>(lib.func('int shmdt(void *addr)')),
  /** The memory behind a pointer returned by a binding (shmat), as a Buffer. */
  view: (ptr: unknown, len: number): Buffer => Buffer.from(koffi.view(ptr as never, len)),
  errno: (): number => koffi.errno(),
  clearErrno: (): void => { koffi.errno(0); },
  /** Address of a Buffer's first byte, for building iovec arrays. */
  address: (buf: Buffer): bigint => koffi.address(buf) as bigint,
};

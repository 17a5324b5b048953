/**
 * The koffi bindings to libc. Only src/sys imports this file: every other
 * module goes through the typed wrappers beside it, which turn -1/errno into
 * SysError. All calls are synchronous on purpose: ptrace requests are only
 * accepted from the thread that attached, which is Node's main thread.
 */
import koffi from 'koffi';

const lib = koffi.load('libc.so.6');

export const libc = {
  ptrace: lib.func('long ptrace(int request, int pid, uintptr_t addr, uintptr_t data)'),
  /** ptrace with a buffer as data (GETREGS, SETREGS, GETSIGMASK, PEEKSIGINFO...). */
  ptraceBuf: lib.func('ptrace', 'long', ['int', 'int', 'uintptr_t', 'void *']),
  waitpid: lib.func('int waitpid(int pid, void *status, int options)'),
  processVmReadv: lib.func(
    'long process_vm_readv(int pid, void *local, unsigned long liovcnt, void *remote, unsigned long riovcnt, unsigned long flags)',
  ),
  processVmWritev: lib.func(
    'long process_vm_writev(int pid, void *local, unsigned long liovcnt, void *remote, unsigned long riovcnt, unsigned long flags)',
  ),
  ioctl: lib.func('int ioctl(int fd, unsigned long request, void *arg)'),
  syscall: lib.func('long syscall(long nr, uintptr_t a1, uintptr_t a2, uintptr_t a3, uintptr_t a4, uintptr_t a5, uintptr_t a6)'),
  pread: lib.func('long pread(int fd, void *buf, size_t count, int64_t offset)'),
  pwrite: lib.func('long pwrite(int fd, void *buf, size_t count, int64_t offset)'),
  preadv: lib.func('long preadv(int fd, void *iov, int iovcnt, int64_t offset)'),
  kill: lib.func('int kill(int pid, int sig)'),
  socketpair: lib.func('int socketpair(int domain, int type, int protocol, void *sv)'),
  send: lib.func('long send(int fd, void *buf, size_t len, int flags)'),
  recv: lib.func('long recv(int fd, void *buf, size_t len, int flags)'),
  sendmsg: lib.func('long sendmsg(int fd, void *msg, int flags)'),
  recvmsg: lib.func('long recvmsg(int fd, void *msg, int flags)'),
  // Pointers stay koffi externals: koffi.view() reads and writes the attached segment.
  shmat: lib.func('void *shmat(int shmid, void *addr, int flags)'),
  shmdt: lib.func('int shmdt(void *addr)'),
  /** The memory behind a pointer returned by a binding (shmat), as a Buffer. */
  view: (ptr: unknown, len: number): Buffer => Buffer.from(koffi.view(ptr as never, len)),
  errno: (): number => koffi.errno(),
  clearErrno: (): void => { koffi.errno(0); },
  /** Address of a Buffer's first byte, for building iovec arrays. */
  address: (buf: Buffer): bigint => koffi.address(buf) as bigint,
};

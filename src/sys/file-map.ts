/**
 * Shared mappings of a file, for writing page data straight into the page
 * cache: process_vm_readv into such a mapping is the only copy the data
 * makes on its way to the image file (a read into a buffer and then a
 * write() copies it twice).
 *
 * A fault on a shared file mapping that the filesystem cannot back (a full
 * tmpfs, a quota) is SIGBUS, which would kill tsnap: the space is reserved
 * with fallocate() before a range is touched, and a filesystem without
 * fallocate() is not mapped at all (the caller writes instead).
 */
import koffi from 'koffi';
import { SysError } from './errors.js';

const lib = koffi.load('libc.so.6');

type Ptr = unknown; // a koffi pointer (external)
type Cb<T> = (err: unknown, r: T) => void;
interface Fn<A extends unknown[], R> { (...a: A): R; async(...a: [...A, Cb<R>]): void }
const bind = <A extends unknown[], R>(f: unknown) => f as Fn<A, R>;

const mmap = bind<[Ptr, number, number, number, number, number], Ptr>(lib.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)'));
const munmap = bind<[Ptr, number], number>(lib.func('int munmap(void *addr, size_t len)'));
const madviseAt = bind<[bigint, number, number], number>(lib.func('int madvise(uintptr_t addr, size_t len, int advice)'));
const fallocate = bind<[number, number, number, number], number>(lib.func('int fallocate(int fd, int mode, int64_t off, int64_t len)'));
const ftruncate = bind<[number, number], number>(lib.func('int ftruncate(int fd, int64_t len)'));

const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;
const MADV_DONTNEED = 4;
const MADV_POPULATE_WRITE = 23;
const MAP_FAILED = 0xffffffffffffffffn;

/** One shared read-write mapping of `len` bytes of `fd` from `offset` (page aligned). */
export class FileMapping {
  readonly buf: Buffer;
  private readonly base: bigint;
  private unmapped = false;

  private constructor(private readonly ptr: Ptr, readonly offset: number, readonly len: number) {
    this.buf = Buffer.from(koffi.view(ptr as never, len));
    this.base = koffi.address(ptr as never) as bigint;
  }

  /** Mapping past the end of the file is allowed; touching it there is SIGBUS (extend first). */
  static map(fd: number, offset: number, len: number): FileMapping {
    const p = mmap(null, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
    if (p === null || koffi.address(p as never) === MAP_FAILED) {
      throw new SysError('mmap(MAP_SHARED)', koffi.errno());
    }
    return new FileMapping(p, offset, len);
  }

  /**
   * Fills the page tables of [at, at+len) on a pool thread (the space must
   * be reserved: this only maps it), so that the copy into it takes no
   * fault. A failure only loses the head start.
   */
  populateAsync(at: number, len: number, done: () => void = () => {}): void {
    if (this.unmapped) { done(); return; }
    madviseAt.async(this.base + BigInt(at), len, MADV_POPULATE_WRITE, () => done());
  }

  /**
   * Drops the page table entries of [at, at+len) on a pool thread: the data
   * stays in the page cache (it is the file's), the tool's RSS no longer
   * counts it, and a stray access through a stale view reads the file
   * again instead of faulting on unmapped memory.
   */
  releaseAsync(at: number, len: number, done: () => void = () => {}): void {
    if (this.unmapped) { done(); return; }
    madviseAt.async(this.base + BigInt(at), len, MADV_DONTNEED, () => done());
  }

  /** Only once no view of `buf` can be used again and no call on it is in flight. */
  unmap(): void {
    if (this.unmapped) return;
    this.unmapped = true;
    munmap(this.ptr, this.len);
  }
}

/** Reserves [off, off+len) of the file; resolves with 0 or the errno. */
export function fallocateAsync(fd: number, off: number, len: number): Promise<number> {
  return new Promise((resolve) => {
    // errno lives on the pool thread: a failure is asked again here for it.
    fallocate.async(fd, 0, off, len, (err: unknown, r: number) => resolve(!err && r === 0 ? 0 : fallocateSync(fd, off, len)));
  });
}

/** Synchronous fallocate: 0, or the errno. */
export function fallocateSync(fd: number, off: number, len: number): number {
  return fallocate(fd, 0, off, len) === 0 ? 0 : koffi.errno();
}

export function truncateFd(fd: number, len: number): void {
  if (ftruncate(fd, len) !== 0) throw new SysError('ftruncate', koffi.errno());
}

/*
 * A restore's page fill from a read-only mapping of an uncompressed pages
 * file (src/restore/map-fill.ts): each piece of a chunk has its CRC taken
 * from the page cache through the mapping, then goes with
 * process_vm_writev straight from that mapping into the new task, while
 * still in this CPU's cache. One copy of every byte (page cache -> task)
 * instead of two (page cache -> tsnap's buffer -> task).
 *
 * A file truncated under the mapping would make the CRC's read a SIGBUS
 * that ends tsnap. tsnap never truncates or rewrites an image in place
 * (its writers refuse a non-empty directory; squash writes a new one), so
 * only another process could; the handler below turns that SIGBUS, and
 * only one raised inside the CRC of a guarded piece on this thread, into
 * an error (-EFAULT), and leaves every other SIGBUS to its previous
 * disposition. process_vm_writev itself reads the mapping in the kernel:
 * a page past the end is a short write there (EFAULT), never a signal.
 *
 * Built into libtsnap-crc32.so beside the CRC (package.json, build:native).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

uint32_t tsnap_crc32(uint32_t crc, const void *p, size_t n);

/* A CRC piece: written out while it is in L2 (1 MiB per core here). */
#define PIECE (256u << 10)
#define MAX_IOV 1024

static __thread sigjmp_buf *guard_jmp;
static struct sigaction previous;
static volatile sig_atomic_t installed;

static void on_sigbus(int sig, siginfo_t *si, void *uc) {
  sigjmp_buf *j = guard_jmp;
  if (j) {
    guard_jmp = NULL;
    siglongjmp(*j, 1);
  }
  /* Not ours: as if this handler were not there. */
  if (previous.sa_flags & SA_SIGINFO) {
    previous.sa_sigaction(sig, si, uc);
    return;
  }
  if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
    previous.sa_handler(sig);
    return;
  }
  /* The default (an ignored fault is fatal too): returning re-runs the faulting access, which now kills. */
  signal(SIGBUS, SIG_DFL);
}

/* Once per process, from the main thread before any fill (0 or -errno). */
int tsnap_mapfill_init(void) {
  if (installed) return 0;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, &previous) != 0) return -errno;
  installed = 1;
  return 0;
}

/* The CRC of p[0..n), or -1 in *bad when the mapping faulted under it. */
static uint32_t guarded_crc(uint32_t c, const uint8_t *p, size_t n, int *bad) {
  sigjmp_buf j;
  if (sigsetjmp(j, 1)) {
    *bad = 1;
    return c;
  }
  guard_jmp = &j;
  c = tsnap_crc32(c, p, n);
  guard_jmp = NULL;
  return c;
}

/*
 * Chunk `src` (len bytes, inside a read-only mapping), whose pieces go to
 * the task `pid`: pieces[3i] the offset in the chunk, pieces[3i+1] the
 * remote address, pieces[3i+2] the length, in increasing offset order,
 * none past len. The CRC of all len bytes goes into *crc (the caller
 * compares it: on a mismatch the restore fails and the task, which has
 * never run, is killed, so bytes written before the check harm nothing).
 * Returns the bytes written (fewer than the pieces' sum: the write failed
 * inside the piece holding that byte), -EFAULT when the mapping faulted
 * (the file shrank), or -errno of process_vm_writev.
 */
int64_t tsnap_crc_writev(int pid, const uint8_t *src, uint64_t len, const uint64_t *pieces, uint32_t n, uint32_t *crc) {
  struct iovec local[MAX_IOV], remote[MAX_IOV];
  uint32_t c = 0;
  int64_t written = 0;
  uint32_t k = 0;      /* the next piece to write */
  uint64_t kdone = 0;  /* bytes of piece k already written */
  for (uint64_t at = 0; at < len; at += PIECE) {
    uint64_t end = len - at < PIECE ? len : at + PIECE;
    int bad = 0;
    c = guarded_crc(c, src + at, (size_t)(end - at), &bad);
    if (bad) return -EFAULT;
    /* Every piece's part before `end`, in calls of at most MAX_IOV parts. */
    while (k < n && pieces[3 * k] + kdone < end) {
      uint32_t m = 0;
      size_t want = 0;
      while (k < n && m < MAX_IOV && pieces[3 * k] + kdone < end) {
        uint64_t off = pieces[3 * k] + kdone, left = pieces[3 * k + 2] - kdone;
        uint64_t take = end - off < left ? end - off : left;
        local[m].iov_base = (void *)(src + off);
        local[m].iov_len = (size_t)take;
        remote[m].iov_base = (void *)(uintptr_t)(pieces[3 * k + 1] + kdone);
        remote[m].iov_len = (size_t)take;
        want += (size_t)take;
        m++;
        if (take == left) {
          k++;
          kdone = 0;
        } else {
          kdone += take;
        }
      }
      ssize_t got;
      do got = process_vm_writev(pid, local, m, remote, m, 0);
      while (got < 0 && errno == EINTR);
      if (got < 0 && errno != EFAULT) return -(int64_t)errno;
      if (got < 0) got = 0;
      written += got;
      if ((size_t)got < want) {
        *crc = c;
        return written;
      }
    }
  }
  *crc = c;
  return written;
}

/*
 * Several chunks in one call (one pool dispatch costs ~35 us here, through
 * koffi and libuv: 1 024 of them for a GiB). descs[4i..4i+3]: chunk i's
 * source address, its length, its first piece's index in `pieces` and how
 * many pieces it has; done[2i] gets tsnap_crc_writev's result for chunk i,
 * done[2i+1] its CRC. Stops after the first chunk whose result is negative
 * or short (the rest: untouched). Returns the chunks done.
 */
uint32_t tsnap_crc_writev_many(int pid, const uint64_t *descs, uint32_t n, const uint64_t *pieces, int64_t *done) {
  for (uint32_t i = 0; i < n; i++) {
    const uint64_t *d = descs + 4 * i;
    const uint64_t *p = pieces + 3 * d[2];
    uint32_t crc = 0;
    int64_t want = 0;
    for (uint64_t k = 0; k < d[3]; k++) want += (int64_t)p[3 * k + 2];
    int64_t got = tsnap_crc_writev(pid, (const uint8_t *)(uintptr_t)d[0], d[1], p, (uint32_t)d[3], &crc);
    done[2 * i] = got;
    done[2 * i + 1] = crc;
    if (got < want) return i + 1;
  }
  return n;
}

/* a * b modulo the CRC polynomial, in the reflected form (bit 31 is x^0). */
static uint32_t mul_mod_p(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = b & 1 ? (b >> 1) ^ 0xEDB88320u : b >> 1;
  }
  return p;
}

/* x^(8 * n) modulo the polynomial: square and multiply over n's bits. */
static uint32_t x8n_mod_p(uint64_t n) {
  uint32_t r = 1u << 31, sq = 1u << 23; /* x^0, x^8 */
  for (; n; n >>= 1) {
    if (n & 1) r = mul_mod_p(r, sq);
    sq = mul_mod_p(sq, sq);
  }
  return r;
}

/*
 * zlib's crc32_combine: the CRC of A followed by B from crc(A), crc(B) and
 * B's length, for each of n pairs (out[i] from a[i], b[i], blen[i]): a
 * chunk whose two halves two lanes checked (tsnap_crc_gather).
 */
void tsnap_crc32_combine_many(const uint32_t *a, const uint32_t *b, const uint64_t *blen, uint32_t n, uint32_t *out) {
  /* Most chunks lie in one lane (B empty, or A's CRC 0 and so no term of its own): ~10 us saved each, in cold code. */
  for (uint32_t i = 0; i < n; i++) out[i] = blen[i] == 0 ? a[i] : a[i] == 0 ? b[i] : mul_mod_p(x8n_mod_p(blen[i]), a[i]) ^ b[i];
}

/* The CRC of chunk k's bytes [*cur, to) added to *crc, under the caller's SIGBUS guard (out[1]: the chunk, should it fault). */
static void crc_to(const uint64_t *chunks, uint64_t k, uint64_t *cur, uint64_t to, uint32_t *crc, uint64_t *out) {
  if (to <= *cur) return;
  out[1] = k;
  *crc = tsnap_crc32(*crc, (const uint8_t *)(uintptr_t)chunks[k] + *cur, (size_t)(to - *cur));
  *cur = to;
}

#define SLOTS 16

/* Slot i's chunk CRC'd up to its end (within this lane's part), and the slot let go. */
static void flush_slot(const uint64_t *chunks, uint64_t *seg, uint32_t *crcs, uint64_t *slot, uint64_t *slot_end, uint32_t *nslots, uint32_t i, uint64_t *out) {
  uint64_t k = slot[i], *sg = seg + 3 * k;
  crc_to(chunks, k, &sg[2], slot_end[i] < sg[1] ? slot_end[i] : sg[1], &crcs[k], out);
  (*nslots)--;
  slot[i] = slot[*nslots];
  slot_end[i] = slot_end[*nslots];
}

/* The resolved runs as the restore holds them (ResolvedTable, src/image/chain-index.ts): columns, integers in doubles. */
struct runs {
  const double *start, *pages, *offset;
  const int32_t *image;
  const uint32_t *chunk;
  const uint32_t *base; /* chunk j of level l is chunk base[l] + j of `chunks` */
  uint64_t page;
};

static int64_t crc_gather(int pid, const uint64_t *chunks, uint64_t *seg, uint32_t *crcs, uint32_t nchunks, const struct runs *r, uint32_t from, uint32_t to, int finish, uint64_t *out) {
  struct iovec local[MAX_IOV], remote[MAX_IOV];
  uint64_t slot[SLOTS], slot_end[SLOTS];
  uint32_t nslots = 0;
  uint32_t i = from;
  uint64_t kdone = 0; /* bytes of piece i already taken */
  while (i < to) {
    uint32_t nl = 0, nr = 0;
    size_t want = 0;
    while (i < to && want < PIECE && nl < MAX_IOV && nr < MAX_IOV) {
      uint64_t k = r->base[r->image[i]] + r->chunk[i], off = (uint64_t)r->offset[i] + kdone, left = (uint64_t)r->pages[i] * r->page - kdone;
      uint64_t take = PIECE - want < left ? PIECE - want : left;
      /* How far each chunk's CRC must go before the write: one CRC call per chunk and group, not per piece (~7 KiB each). */
      uint32_t s = 0;
      while (s < nslots && slot[s] != k) s++;
      if (s == nslots) {
        if (nslots == SLOTS) flush_slot(chunks, seg, crcs, slot, slot_end, &nslots, 0, out);
        s = nslots++;
        slot[s] = k;
        slot_end[s] = 0;
      }
      if (off + take > slot_end[s]) slot_end[s] = off + take;
      uint8_t *src = (uint8_t *)(uintptr_t)chunks[k] + off;
      uint8_t *dst = (uint8_t *)(uintptr_t)((uint64_t)r->start[i] + kdone);
      if (nl && (uint8_t *)local[nl - 1].iov_base + local[nl - 1].iov_len == src) local[nl - 1].iov_len += (size_t)take;
      else local[nl++] = (struct iovec){src, (size_t)take};
      if (nr && (uint8_t *)remote[nr - 1].iov_base + remote[nr - 1].iov_len == dst) remote[nr - 1].iov_len += (size_t)take;
      else remote[nr++] = (struct iovec){dst, (size_t)take};
      want += (size_t)take;
      if (take == left) {
        i++;
        kdone = 0;
      } else {
        kdone += take;
      }
    }
    while (nslots) flush_slot(chunks, seg, crcs, slot, slot_end, &nslots, nslots - 1, out);
    ssize_t got;
    do got = process_vm_writev(pid, local, nl, remote, nr, 0);
    while (got < 0 && errno == EINTR);
    if (got < 0 && errno != EFAULT) return -(int64_t)errno;
    if (got < 0) got = 0;
    out[0] += (uint64_t)got;
    if ((size_t)got < want) return 1;
  }
  if (finish)
    for (uint32_t k = 0; k < nchunks; k++) crc_to(chunks, k, &seg[3 * k + 2], seg[3 * k + 1], &crcs[k], out);
  return 0;
}

/*
 * A chain by address from mappings (src/restore/page-filler.ts,
 * fillFused): the pieces of every level in the target's address order,
 * each group of up to PIECE bytes first added to its chunks' CRCs, then
 * written by one process_vm_writev while still in this CPU's cache, local
 * and remote iovecs each merged where side by side. A chunk's CRC covers
 * all of it, the bytes a newer level replaced too, so this lane walks its
 * part of each chunk, [lo, hi), in order: seg[3k] lo, seg[3k+1] hi,
 * seg[3k+2] how far it got, crcs[k] the CRC of [lo, that) (both kept
 * across calls; lo = hi: a chunk no run uses). chunks[k]: chunk k's
 * source address. The pieces are runs from..to-1 of the resolved table's
 * columns as they are (run i: start[i], pages[i] of `page` bytes, from
 * chunk chunk[i] of level image[i], that is chunks[base[image[i]] +
 * chunk[i]], at offset[i]; none past its chunk's end: the caller checks),
 * so no second list is built per run. `finish`: after the pieces, every
 * chunk's part is walked to hi. out[0] += bytes written; out[1]: the
 * chunk that faulted. Returns 0; 1 when a write was short (the piece
 * holding byte out[0] failed); -EFAULT when the mapping
 * faulted (the file shrank); -errno of process_vm_writev.
 */
int64_t tsnap_crc_gather(int pid, const uint64_t *chunks, uint64_t *seg, uint32_t *crcs, uint32_t nchunks, const uint32_t *base, const double *start, const double *pages, const int32_t *image, const uint32_t *chunk, const double *offset, uint32_t page, uint32_t from, uint32_t to, int finish, uint64_t *out) {
  struct runs r = {start, pages, offset, image, chunk, base, page};
  /* One guard for the whole call: sigsetjmp saves the signal mask with a syscall, too dear per piece (~150 000 a GiB). */
  sigjmp_buf j;
  if (sigsetjmp(j, 1)) return -EFAULT;
  guard_jmp = &j;
  int64_t ret = crc_gather(pid, chunks, seg, crcs, nchunks, &r, from, to, finish, out);
  guard_jmp = NULL;
  return ret;
}

/* munmap, for koffi's .async: unmapping a GiB of file pages takes ~15 ms per 512 MiB here, off tsnap's thread. */
int tsnap_unmap(uint64_t addr, uint64_t len) {
  return munmap((void *)(uintptr_t)addr, (size_t)len) == 0 ? 0 : -errno;
}

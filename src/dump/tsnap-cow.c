/*
 * The fault server of a copy-on-write dump (cow-session.ts), as a native
 * thread of tsnap's process, loaded through the FFI (src/sys/cow-server.ts).
 *
 * Why native and not a node worker thread (what it was): a Worker is a
 * second V8 isolate with its own heap, bootstrap and modules, ~10 MiB of
 * the tool's peak RSS for a loop that polls one fd, copies a few pages and
 * makes one ioctl (issue 14, requirement 5: +32 MiB over node; the frozen
 * dump is at +27). This thread costs its stack's touched pages.
 *
 * Why a thread at all: a write to a protected page blocks the writing
 * thread of the target until tsnap unprotects it, so faults must be served
 * within microseconds even while the main thread is inside a long
 * process_vm_readv or waiting for the page writer.
 *
 * The protocol with the main thread is the shared memory of cow-shared.ts
 * (ctl words, the slots, the store, the free ring, the early log): memory
 * of SharedArrayBuffers whose addresses JavaScript hands over here, read
 * and written there with Atomics and here with the same sequentially
 * consistent operations. Where one side waits for the other, it sleeps on
 * a futex on that word (JavaScript through tsnap_cow_wait: V8's own
 * Atomics.wait does not see a futex wake).
 *
 * For each write fault: save the page (and the not yet saved pages of its
 * aligned block) into the store, publish the slots, then unprotect, which
 * wakes the writer. Pages the main thread has passed only need the
 * wake-up. Removal events (munmap, MADV_DONTNEED, mremap) over pages not
 * yet taken mark the dump lost: the kernel reports an unmap after the data
 * is gone, and a removal only just before, as the read of the event lets
 * it proceed, so such pages cannot be saved in time.
 *
 * Before the freeze (cow-prearm.ts, the early phase) memory is protected
 * while the target runs and no snapshot exists yet: a write fault only
 * needs its page unprotected (a huge page whole), logged for the main
 * thread's next protection pass.
 *
 * The thread allocates nothing (no malloc arena of its own) and takes no
 * signal (all blocked): a signal to tsnap goes to a thread of Node's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096ul
#define HUGE (2ul << 20)
#define MSGS 64
#define MAX_BLOCK 64

/* Indices of cow-shared.ts CTL and TIMES: keep in step. */
enum { STOP, NEXT_SLOT, LOST, FAULTS, FAULT_PAGES, DEFERRED, CURSOR, GO, STATE, LOST_EVENT, FREE_HEAD, FREE_TAIL, PROTECTED, EARLY, EARLY_FAULTS, FAILED };
enum { SERVICE_NS, MAX_SERVICE_NS, LOST_AT };

struct range { uint64_t start, end, first; };
struct span { uint64_t start, len; };

struct cow {
  pthread_t thread;
  int32_t *ctl;
  double *times;
  /* The early phase. */
  int early_uffd, early_wake;
  double *log;
  uint32_t log_len;
  struct span *huge; /* start, end */
  uint32_t nhuge;
  /* The serving phase. */
  int pid, uffd, wake;
  struct range *ranges;
  uint32_t nranges;
  int32_t *slots;
  uint8_t *store;
  uint32_t capacity;
  int32_t *free;
  uint32_t block_pages;
  struct span *protect;
  uint32_t nprotect;
  int have_last;
  uint64_t last_fault;
  struct uffd_msg msgs[MSGS];
};

static int32_t ld(int32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static void st(int32_t *p, int32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static int32_t add(int32_t *p, int32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static int cas(int32_t *p, int32_t want, int32_t v) { return __atomic_compare_exchange_n(p, &want, v, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); }

static void wake_all(int32_t *p) { syscall(SYS_futex, p, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0); }

/* Sleeps while *p == v, up to ms (< 0: no bound); spurious returns are the caller's loop's. */
static void wait_while(int32_t *p, int32_t v, int ms) {
  struct timespec t = { ms / 1000, (ms % 1000) * 1000000l };
  syscall(SYS_futex, p, FUTEX_WAIT_PRIVATE, v, ms < 0 ? NULL : &t, NULL, 0);
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* The thread cannot go on: its faults wait for the copy, and the main thread takes the dump again. */
static void fail(struct cow *c, int err) {
  cas(&c->ctl[FAILED], 0, err ? err : EIO);
  /* Nobody must wait for this thread any more. */
  if (cas(&c->ctl[PROTECTED], 0, err ? err : EIO)) wake_all(&c->ctl[PROTECTED]);
  if (cas(&c->ctl[EARLY], 4, 1)) wake_all(&c->ctl[EARLY]);
}

/* UFFDIO_WRITEPROTECT: 0 or the errno (ENOENT: no longer mapped). */
static int set_wp(int uffd, uint64_t start, uint64_t len, int on) {
  struct uffdio_writeprotect a = { .range = { start, len }, .mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0 };
  return ioctl(uffd, UFFDIO_WRITEPROTECT, &a) == -1 ? errno : 0;
}

/* Messages read (0: none now), or -errno. */
static int read_msgs(int fd, struct uffd_msg *m) {
  for (;;) {
    ssize_t n = read(fd, m, sizeof(struct uffd_msg) * MSGS);
    if (n >= 0) return (int)(n / (ssize_t)sizeof(struct uffd_msg));
    if (errno == EAGAIN) return 0;
    if (errno != EINTR) return -errno;
  }
}

/* poll() for input on both fds, no bound: bit 0 the uffd, bit 1 the wake pipe; or -errno. */
static int poll2(int a, int b) {
  struct pollfd p[2] = { { a, POLLIN, 0 }, { b, POLLIN, 0 } };
  for (;;) {
    if (poll(p, 2, -1) >= 0) return (p[0].revents ? 1 : 0) | (p[1].revents ? 2 : 0);
    if (errno != EINTR) return -errno;
  }
}

static int in_huge(struct cow *c, uint64_t addr) {
  long lo = 0, hi = (long)c->nhuge - 1;
  while (lo <= hi) {
    long mid = (lo + hi) / 2;
    if (addr < c->huge[mid].start) hi = mid - 1;
    else if (addr >= c->huge[mid].len) lo = mid + 1;
    else return 1;
  }
  return 0;
}

/* 0 when the main thread ended the phase or asked to stop, else -errno. */
static int early(struct cow *c) {
  int32_t *ctl = c->ctl;
  for (;;) {
    int r = poll2(c->early_uffd, c->early_wake);
    if (r < 0) return r;
    if (r & 2) { char b[16]; (void)!read(c->early_wake, b, sizeof b); }
    if (ld(&ctl[STOP])) return 0;
    /* Busy (4) only with the main thread's leave: once it has ended the phase (2), nothing more
     * is let go, and what poll() reported is left for the serving phase to read. */
    if (!cas(&ctl[EARLY], 1, 4)) return 0;
    if (r & 1) {
      for (;;) {
        int n = read_msgs(c->early_uffd, c->msgs);
        if (n < 0) return n;
        if (n == 0) break;
        /* Removal events only need reading (their writer waits for that); nothing is copied yet. */
        for (int i = 0; i < n; i++) {
          if (c->msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
          uint64_t addr = c->msgs[i].arg.pagefault.address;
          /* A huge page goes whole: unprotecting 4 KiB of it would split it, and
           * the frozen scan and protection would then walk 512 entries, not one. */
          int huge = in_huge(c, addr);
          uint64_t page = addr & ~((huge ? HUGE : PAGE) - 1);
          set_wp(c->early_uffd, page, huge ? HUGE : PAGE, 0);
          /* Logged for the main thread's next pass; the count is stored after the entry. */
          int32_t k = ld(&ctl[EARLY_FAULTS]);
          c->log[(uint32_t)k % c->log_len] = (double)(huge ? page + 1 : page);
          st(&ctl[EARLY_FAULTS], k + 1);
        }
      }
    }
    st(&ctl[EARLY], 1);
    wake_all(&ctl[EARLY]);
  }
}

/* The range holding addr, or -1. */
static long range_of(struct cow *c, uint64_t addr) {
  long lo = 0, hi = (long)c->nranges - 1;
  while (lo <= hi) {
    long mid = (lo + hi) / 2;
    if (addr < c->ranges[mid].start) hi = mid - 1;
    else if (addr >= c->ranges[mid].end) lo = mid + 1;
    else return mid;
  }
  return -1;
}

/* Whether [start, end) holds a page not yet taken by either thread, given the cursor read before the event. */
static int untaken(struct cow *c, uint64_t start, uint64_t end, int32_t cursor) {
  long i = range_of(c, start);
  if (i < 0) for (i = 0; i < (long)c->nranges && c->ranges[i].end <= start; i++) ;
  for (; i < (long)c->nranges && c->ranges[i].start < end; i++) {
    struct range *r = &c->ranges[i];
    uint64_t from = start > r->start ? start : r->start, to = end < r->end ? end : r->end;
    for (uint64_t a = from & ~(PAGE - 1); a < to; a += PAGE) {
      int64_t idx = (int64_t)(r->first + (a - r->start) / PAGE);
      if (idx >= cursor && ld(&c->slots[idx]) == 0) return 1;
    }
  }
  return 0;
}

static void lose(struct cow *c, int event, uint64_t at) {
  if (cas(&c->ctl[LOST], 0, 1)) {
    st(&c->ctl[LOST_EVENT], event);
    c->times[LOST_AT] = (double)at;
  }
}

/* Bytes read into the store at slot, or -errno (EFAULT on the first page: 0). */
static long readv_pages(struct cow *c, uint32_t slot, const uint64_t *addrs, int n) {
  struct iovec local = { c->store + (uint64_t)slot * PAGE, (size_t)n * PAGE };
  struct iovec remote[MAX_BLOCK];
  for (int i = 0; i < n; i++) remote[i] = (struct iovec){ (void *)addrs[i], PAGE };
  ssize_t got = process_vm_readv(c->pid, &local, 1, remote, (unsigned long)n, 0);
  if (got >= 0) return got;
  return errno == EFAULT ? 0 : -errno;
}

/*
 * Saves pages of want (the faulting one first) into store slots, their
 * slots into slot_of: one read into fresh consecutive slots while there
 * are, else page by page into slots the main thread gave back. Returns how
 * many of want, from the first, were saved, or -errno.
 */
static int take_slots(struct cow *c, const uint64_t *want, int n, uint32_t *slot_of) {
  int32_t *ctl = c->ctl;
  int32_t next = ld(&ctl[NEXT_SLOT]), head = ld(&ctl[FREE_HEAD]), tail = ld(&ctl[FREE_TAIL]);
  if (tail == head && (uint32_t)next + (uint32_t)n <= c->capacity) {
    st(&ctl[NEXT_SLOT], next + n);
    long got = readv_pages(c, (uint32_t)next, want, n);
    if (got < 0) return (int)got;
    for (int k = 0; k < got / (long)PAGE; k++) slot_of[k] = (uint32_t)next + (uint32_t)k;
    return (int)(got / (long)PAGE);
  }
  int done = 0;
  int32_t bump = next;
  for (; done < n; done++) {
    uint32_t slot;
    if (tail < head) slot = (uint32_t)c->free[(uint32_t)tail++ % c->capacity];
    else if ((uint32_t)bump < c->capacity) slot = (uint32_t)bump++;
    else break;
    long got = readv_pages(c, slot, &want[done], 1);
    if (got < 0) return (int)got;
    if (got != (long)PAGE) break;
    slot_of[done] = slot;
  }
  st(&ctl[FREE_TAIL], tail);
  st(&ctl[NEXT_SLOT], bump);
  return done;
}

/* An error (ENOENT: unmapped meanwhile) means nothing waits there any more. */
static void wake(struct cow *c, uint64_t start, uint64_t len) { set_wp(c->uffd, start, len, 0); }

/* 0, or -errno when the thread cannot go on. */
static int fault(struct cow *c, uint64_t address, int32_t cursor) {
  uint64_t t0 = now_ns();
  add(&c->ctl[FAULTS], 1);
  uint64_t page = address & ~(PAGE - 1);
  long ri = range_of(c, page);
  struct range *r = ri >= 0 ? &c->ranges[ri] : NULL;
  int64_t idx = r ? (int64_t)(r->first + (page - r->start) / PAGE) : -1;
  if (!r || idx < cursor || ld(&c->slots[idx]) != 0) {
    wake(c, page, PAGE);
  } else {
    /* The faulting page first: it alone is what the writer waits for. Its
     * block too when the writer moves sequentially (its previous fault was
     * next to it); a random writer would only fill the store with pages
     * it never writes. */
    uint64_t block = (uint64_t)c->block_pages * PAGE;
    int near = c->have_last && (page > c->last_fault ? page - c->last_fault : c->last_fault - page) <= block;
    c->have_last = 1;
    c->last_fault = page;
    uint64_t bs = page, be = page + PAGE;
    if (near) {
      bs = page - page % block;
      if (bs < r->start) bs = r->start;
      be = bs + block < r->end ? bs + block : r->end;
    }
    uint64_t want[MAX_BLOCK];
    uint32_t slot_of[MAX_BLOCK];
    int n = 0;
    want[n++] = page;
    for (uint64_t a = bs; a < be && n < MAX_BLOCK; a += PAGE) {
      int64_t i = (int64_t)(r->first + (a - r->start) / PAGE);
      if (a != page && i >= cursor && ld(&c->slots[i]) == 0) want[n++] = a;
    }
    int got = take_slots(c, want, n, slot_of);
    if (got < 0) return got;
    if (got == 0) {
      /* Store full (or the page unreadable now: gone; the main thread's read finds out):
       * the writer waits until the sequential copy reaches its page, which unprotects it. */
      add(&c->ctl[DEFERRED], 1);
      return 0;
    }
    /* Slots are published before the page is unprotected. */
    for (int k = 0; k < got; k++) st(&c->slots[r->first + (want[k] - r->start) / PAGE], (int32_t)slot_of[k] + 1);
    add(&c->ctl[FAULT_PAGES], got);
    /* Sorted: want[0] (the faulting page, saved whenever anything is) among the rest, ascending. */
    uint64_t saved[MAX_BLOCK];
    int m = 0;
    for (int k = 1; k < got; k++) {
      if (m == k - 1 && want[k] > page) saved[m++] = page;
      saved[m++] = want[k];
    }
    if (m < got) saved[m++] = page;
    /* Unprotect what was saved, in runs; pages left out stay protected. */
    uint64_t s = saved[0], e = s + PAGE;
    for (int k = 1; k < m; k++) {
      if (saved[k] == e) { e += PAGE; continue; }
      wake(c, s, e - s);
      s = saved[k];
      e = s + PAGE;
    }
    wake(c, s, e - s);
  }
  uint64_t ns = now_ns() - t0;
  c->times[SERVICE_NS] += (double)ns;
  if ((double)ns > c->times[MAX_SERVICE_NS]) c->times[MAX_SERVICE_NS] = (double)ns;
  return 0;
}

static int drain(struct cow *c) {
  for (;;) {
    /* Read before the messages: a range below it was taken before any removal they report. */
    int32_t cursor = ld(&c->ctl[CURSOR]);
    int n = read_msgs(c->uffd, c->msgs);
    if (n <= 0) return n;
    /* Removals first, judged on what was saved before this read: a fault
     * of the same batch served now could read a page the removal, let go
     * by this very read, has already dropped. */
    for (int i = 0; i < n; i++) {
      struct uffd_msg *m = &c->msgs[i];
      if (m->event == UFFD_EVENT_UNMAP || m->event == UFFD_EVENT_REMOVE) {
        if (untaken(c, m->arg.remove.start, m->arg.remove.end, cursor)) lose(c, m->event, m->arg.remove.start);
      } else if (m->event == UFFD_EVENT_REMAP) {
        if (untaken(c, m->arg.remap.from, m->arg.remap.from + m->arg.remap.len, cursor)) lose(c, m->event, m->arg.remap.from);
      }
    }
    for (int i = 0; i < n; i++) {
      if (c->msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      int r = fault(c, c->msgs[i].arg.pagefault.address, cursor);
      if (r < 0) return r;
    }
  }
}

static int serve(struct cow *c) {
  int32_t *ctl = c->ctl;
  st(&ctl[STATE], 1);
  /* The target is still frozen: this half of the protecting runs beside the main thread's. */
  int failed = 0;
  for (uint32_t i = 0; i < c->nprotect && !failed; i++) failed = set_wp(c->uffd, c->protect[i].start, c->protect[i].len, 1);
  st(&ctl[PROTECTED], failed ? failed : 1);
  wake_all(&ctl[PROTECTED]);
  if (failed) return 0;
  for (;;) {
    int r = poll2(c->uffd, c->wake);
    if (r < 0) return r;
    if (r & 1) { int d = drain(c); if (d < 0) return d; }
    if ((r & 2) || ld(&ctl[STOP])) return drain(c);
  }
}

static void *run(void *arg) {
  struct cow *c = arg;
  int32_t *ctl = c->ctl;
  /* nice -10 when allowed (CAP_SYS_NICE): a thread of the target waits on each fault served. */
  setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), -10);
  int err = 0;
  /* Sleep until the ranges are protected and the configuration is given. */
  while (ld(&ctl[GO]) == 0) wait_while(&ctl[GO], 0, -1);
  if (!ld(&ctl[STOP])) {
    if (c->early_uffd >= 0) {
      err = early(c);
      /* The snapshot's configuration follows once the frozen scan is done (GO 2). */
      while (!err && ld(&ctl[GO]) < 2) wait_while(&ctl[GO], 1, -1);
    }
    if (!err && !ld(&ctl[STOP]) && c->uffd >= 0) err = serve(c);
  }
  if (err) fail(c, -err);
  st(&ctl[STATE], 2);
  wake_all(&ctl[STATE]);
  return NULL;
}

/*
 * Starts the thread, which sleeps until tsnap_cow_go_early or tsnap_cow_go.
 * ctl (CTL.SIZE int32) and times (TIMES.SIZE doubles) stay alive until
 * tsnap_cow_stop returns. NULL and errno on failure.
 */
struct cow *tsnap_cow_start(int32_t *ctl, double *times) {
  struct cow *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->ctl = ctl;
  c->times = times;
  c->early_uffd = c->early_wake = c->uffd = c->wake = -1;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  /* What it touches is a few KiB (the messages live in *c). */
  pthread_attr_setstacksize(&attr, 256 << 10);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int e = pthread_create(&c->thread, &attr, run, c);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (e) { free(c); errno = e; return NULL; }
  return c;
}

/* huge: pairs (start, end), sorted; log: log_len doubles, alive until stop. */
void tsnap_cow_go_early(struct cow *c, int uffd, int wake_fd, double *log, uint32_t log_len, const uint64_t *huge, uint32_t nhuge) {
  c->huge = nhuge ? malloc(nhuge * sizeof *c->huge) : NULL;
  if (c->huge) memcpy(c->huge, huge, nhuge * sizeof *c->huge);
  c->nhuge = c->huge ? nhuge : 0;
  c->early_uffd = uffd;
  c->early_wake = wake_fd;
  c->log = log;
  c->log_len = log_len;
  /* Set here, not by the thread: ended (2) before the thread even looks, the phase stays ended. */
  st(&c->ctl[EARLY], 1);
  st(&c->ctl[GO], 1);
  wake_all(&c->ctl[GO]);
}

/*
 * ranges: triples (start, end, first index); protect: pairs (start, len).
 * Both copied. slots, store (capacity pages) and free (capacity int32)
 * stay alive until stop. 0, or ENOMEM.
 */
int tsnap_cow_go(struct cow *c, int pid, int uffd, int wake_fd, const uint64_t *ranges, uint32_t nranges, int32_t *slots,
                 uint8_t *store, uint32_t capacity, int32_t *freering, uint32_t block_pages, const uint64_t *protect, uint32_t nprotect) {
  c->ranges = malloc((nranges ? nranges : 1) * sizeof *c->ranges);
  c->protect = malloc((nprotect ? nprotect : 1) * sizeof *c->protect);
  if (!c->ranges || !c->protect) return ENOMEM;
  memcpy(c->ranges, ranges, nranges * sizeof *c->ranges);
  memcpy(c->protect, protect, nprotect * sizeof *c->protect);
  c->nranges = nranges;
  c->nprotect = nprotect;
  c->pid = pid;
  c->uffd = uffd;
  c->wake = wake_fd;
  c->slots = slots;
  c->store = store;
  c->capacity = capacity;
  c->free = freering;
  c->block_pages = block_pages < MAX_BLOCK ? block_pages : MAX_BLOCK;
  int early = c->early_uffd >= 0;
  st(&c->ctl[GO], early ? 2 : 1);
  wake_all(&c->ctl[GO]);
  return 0;
}

/* For the main thread: sleeps while ctl[i] == v, up to ms. */
void tsnap_cow_wait(struct cow *c, uint32_t i, int32_t v, int ms) { wait_while(&c->ctl[i], v, ms); }

/*
 * Tells the thread to stop (after reading every pending message: the wake
 * pipe's byte, written by the caller, interrupts its poll()) and joins it;
 * frees c.
 */
void tsnap_cow_stop(struct cow *c) {
  st(&c->ctl[STOP], 1);
  if (ld(&c->ctl[GO]) < 2) st(&c->ctl[GO], 2);
  wake_all(&c->ctl[GO]);
  pthread_join(c->thread, NULL);
  free(c->huge);
  free(c->ranges);
  free(c->protect);
  free(c);
}

/*
 * The real-time class's watchdog (src/sys/rt-watch.ts): a thread of
 * tsnap's process, in the normal class, that gives every thread a window
 * raised to SCHED_FIFO its own class back once the window has lasted
 * longer than its bound.
 *
 * Why: a window's threads (tsnap's main thread, its guardian, the target's
 * threads, a restored process) go to SCHED_FIFO at priority 1 for tens of
 * milliseconds (migrate/window-priority.ts). That shelters them from every
 * normal task, not from real-time tasks above priority 1: under those, the
 * kernel's real-time throttling leaves its last 5% of each second to the
 * normal class only, so a FIFO 1 thread gets no CPU at all, for as long as
 * they run (seen here: two perf processes in FIFO 50 for 13 minutes held a
 * copy-on-write dump's target frozen throughout). A bug that spun in the
 * window would also take 95% of a CPU from everything else. Back in the
 * normal class, the window goes on at the normal class's pace.
 *
 * Why a thread of its own, in the normal class: the JavaScript that raised
 * the threads is one of them, and stalls with them. A normal thread gets
 * its share of that last 5% even under real-time hogs.
 *
 * Lock-free on purpose: the raised main thread must never wait for this
 * one (preempted, it would hold a lock for as long as the stall lasts).
 * Entries and the deadline are atomics; the thread sleeps on a futex on
 * the generation word, with the deadline as its timeout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 256

struct slot {
  _Atomic int32_t tid;      /* 0: free */
  _Atomic int32_t policy;   /* the class to give back */
  _Atomic int32_t priority;
};

static struct slot slots[SLOTS];
static _Atomic int64_t deadline_ns; /* CLOCK_MONOTONIC; 0: disarmed */
static _Atomic uint32_t generation; /* bumped by every arm and disarm: the thread's futex word */
static _Atomic int32_t fired;       /* threads given back by the last firing, since the last arm */
static _Atomic int64_t fired_at_ns;
static _Atomic int started;

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000ll + t.tv_nsec;
}

static void futex_wait(_Atomic uint32_t *word, uint32_t value, int64_t timeout_ns) {
  struct timespec ts, *tp = NULL;
  if (timeout_ns >= 0) {
    ts.tv_sec = timeout_ns / 1000000000ll;
    ts.tv_nsec = timeout_ns % 1000000000ll;
    tp = &ts;
  }
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, value, tp, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word) {
  syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void give_back(void) {
  int32_t n = 0;
  for (int i = 0; i < SLOTS; i++) {
    int32_t tid = atomic_load(&slots[i].tid);
    if (!tid) continue;
    /* Read while the slot is taken: only a free slot gets new values. */
    int32_t policy = atomic_load(&slots[i].policy);
    struct sched_param p = { .sched_priority = atomic_load(&slots[i].priority) };
    if (!atomic_compare_exchange_strong(&slots[i].tid, &tid, 0)) continue; /* forgotten meanwhile */
    if (syscall(SYS_sched_setscheduler, tid, policy, &p) == 0) n++;
  }
  atomic_store(&fired_at_ns, now_ns());
  atomic_store(&fired, n > 0 ? n : -1); /* -1: fired, nothing was left to give back */
}

static void *watch(void *arg) {
  (void)arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL); /* a signal to tsnap goes to one of Node's threads */
  /* Started by a thread that may be raised (SCHED_FIFO without SCHED_RESET_ON_FORK): the normal class, whatever it inherited. */
  struct sched_param zero = { 0 };
  sched_setscheduler(0, SCHED_OTHER, &zero);
  setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), -10); /* best effort: prompt among normal tasks */
  for (;;) {
    uint32_t gen = atomic_load(&generation);
    int64_t d = atomic_load(&deadline_ns);
    if (!d) { futex_wait(&generation, gen, -1); continue; }
    int64_t left = d - now_ns();
    if (left > 0) { futex_wait(&generation, gen, left); continue; }
    /* Past the deadline, unless an arm or a disarm came in between. */
    if (atomic_compare_exchange_strong(&deadline_ns, &d, 0) && atomic_load(&generation) == gen) give_back();
  }
  return NULL;
}

/* Starts the thread (once); returns 0 or an errno value. */
int tsnap_rtwatch_start(void) {
  if (atomic_load(&started)) return 0;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setstacksize(&a, 64 * 1024);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  pthread_t t;
  int err = pthread_create(&t, &a, watch, NULL);
  pthread_attr_destroy(&a);
  if (err) return err;
  atomic_store(&started, 1);
  return 0;
}

/* Arms the deadline `bound_ms` from now (a window begins); the last firing's figures are cleared. */
void tsnap_rtwatch_arm(int64_t bound_ms) {
  atomic_store(&fired, 0);
  atomic_store(&fired_at_ns, 0);
  atomic_store(&deadline_ns, now_ns() + bound_ms * 1000000ll);
  atomic_fetch_add(&generation, 1);
  futex_wake(&generation);
}

/* No deadline (the window is over); the entries left are dropped. */
void tsnap_rtwatch_disarm(void) {
  atomic_store(&deadline_ns, 0);
  atomic_fetch_add(&generation, 1);
  futex_wake(&generation);
  for (int i = 0; i < SLOTS; i++) atomic_store(&slots[i].tid, 0);
}

/* `tid` is raised; `policy` and `priority` are its class to give back. 0, or -1 when every slot is taken. */
int tsnap_rtwatch_add(int32_t tid, int32_t policy, int32_t priority) {
  for (int i = 0; i < SLOTS; i++) {
    if (atomic_load(&slots[i].tid)) continue;
    atomic_store(&slots[i].policy, policy);
    atomic_store(&slots[i].priority, priority);
    int32_t free_ = 0;
    if (atomic_compare_exchange_strong(&slots[i].tid, &free_, tid)) return 0;
  }
  return -1;
}

/* `tid` got its class back from tsnap itself. */
void tsnap_rtwatch_forget(int32_t tid) {
  for (int i = 0; i < SLOTS; i++) {
    int32_t t = tid;
    atomic_compare_exchange_strong(&slots[i].tid, &t, 0);
  }
}

/* Since the last arm: 0 not fired; > 0 how many threads it gave back; -1 fired with none left. */
int32_t tsnap_rtwatch_fired(void) {
  return atomic_load(&fired);
}

/* When it fired (CLOCK_MONOTONIC ns), 0 if it did not. */
int64_t tsnap_rtwatch_fired_at(void) {
  return atomic_load(&fired_at_ns);
}

/*
 * tsnap-guardian: the ptrace tracer of every process tsnap freezes.
 *
 * Why a separate process: when a tracer dies, the kernel detaches its
 * tracees as they are. A tsnap killed (SIGKILL, OOM, crash) in the middle of
 * a remote syscall would let the target run on with tsnap's registers, a
 * scratch mapping or an injected fd. The guardian owns the attachment, the
 * registers found at the freeze, and an undo list of what tsnap created in
 * each target; it runs every request to completion before it reads the next
 * one. When its controller goes away (EOF on the socket), it puts every
 * tracee back exactly as it was frozen and detaches, then exits.
 *
 * Protocol (formats/guardian-v1.md): SOCK_SEQPACKET on fd 3, one request
 * (struct request) per message, one reply (struct reply + data) per request.
 * Single-threaded on purpose: ptrace requests must come from the tracer
 * thread, and one request at a time makes every request atomic with respect
 * to the controller's death.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <sched.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define PROTOCOL_VERSION 6
#define CONTROL_FD 3

#ifndef PTRACE_SECCOMP_GET_FILTER
#define PTRACE_SECCOMP_GET_FILTER 0x420c
#endif
#ifndef PTRACE_SECCOMP_GET_METADATA
#define PTRACE_SECCOMP_GET_METADATA 0x420d
#endif
#ifndef PTRACE_O_SUSPEND_SECCOMP
#define PTRACE_O_SUSPEND_SECCOMP (1 << 21)
#endif
#ifndef PTRACE_GET_RSEQ_CONFIGURATION
#define PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#endif
#ifndef PTRACE_EVENT_STOP
#define PTRACE_EVENT_STOP 128
#endif
#define NT_X86_XSTATE_ 0x202
#define XSTATE_MAX 16384
#define SIGINFO_SIZE 128
#define MAX_DATA (256 * 1024)

/* Errors of the guardian's own, beyond errno values. */
#define G_EXITED 10001   /* the tracee exited during the request */
#define G_TIMEOUT 10002  /* the tracee did not stop in time */
#define G_UNKNOWN 10003  /* not a tracee of this guardian */
#define G_BADREQ 10004   /* malformed request */

enum op {
  OP_HELLO = 0,
  OP_FREEZE = 1,     /* a0 options, a1 timeout ms, a2 1: SCHED_FIFO until release -> regs */
  OP_RELEASE = 2,    /* put back, detach, re-send held signals */
  OP_KILL = 3,       /* a0 pid to SIGKILL (0: none), a1 count <= 16, a2.. tids to reap */
  OP_GETREGS = 4,
  OP_GETXSTATE = 5,
  OP_GETSIGMASK = 6,
  OP_PEEKSIGINFO = 7, /* a0 shared */
  OP_GETRSEQ = 8,
  OP_SYSCALL = 9,    /* a0 gadget, a1 nr, a2..a7 args, a8 undo nr (-1: none),
                        a9..a14 undo args, a15 undo slot for the result (-1: none),
                        a16 undo id this call cancels on success (0: none), a17 timeout ms
                        -> ret = raw rax, data = u64 id of the undo registered (0: none) */
  OP_REPAIR_HOLD = 10, /* with one fd (SCM_RIGHTS): a TCP socket tsnap put in repair
                          mode; should tsnap die, repair mode is switched off -> ret = id */
  OP_REPAIR_DROP = 11, /* a0 id: tsnap is done with it; the guardian closes its copy */
  OP_UNLOCK_HOLD = 12, /* with one fd (SCM_RIGHTS): an iptables-restore script that removes
                          the network lock of a connection, a0 1 = ip6tables; should tsnap
                          die, the guardian runs it -> ret = id */
  OP_UNLOCK_DROP = 13, /* a0 id: tsnap removed the lock itself, or handed it to an image */
  OP_THROTTLE_HOLD = 14, /* with one fd (SCM_RIGHTS): a cgroup v1 cpu directory that has a child
                            "tsnap-throttle-<a0>.<a1>" (tsnap's pid and start time) throttling some of
                            its tasks; should tsnap die, the guardian lifts the quota, moves those tasks
                            back and removes it -> ret = id */
  OP_THROTTLE_DROP = 15, /* a0 id: tsnap put the tasks back itself */
  OP_KILL_ON_EXIT = 16, /* the task is killed, not put back, should the controller go away */
  OP_SYSCALLS = 17,  /* a0 gadget, a1 count <= MAX_BATCH, a17 timeout ms; the message goes on
                        with count struct batch_call -> data = count raw rax values (i64) */
  OP_PIPE = 19,      /* a0 gadget, a1 address of 8 x a3 bytes of scratch, a2 pipe2 flags, a3 how many
                        pipes (0: one), a17 timeout ms -> ret = raw result of the last pipe2 run; data =
                        per pipe made, i32 fds[2], u64 undo ids[2] (close of each end; consecutive ids) */
  OP_UNDO_DROP = 20, /* a0 first, a1 last undo id: tsnap undid those itself (one batch of closes);
                        the guardian forgets them -> ret = how many it forgot */
  OP_RUN = 18,       /* a0 entry, a1 rbx, a2 r12, a3 code start, a4 code end (the address after its
                        int3), a17 timeout ms: runs tsnap's code in the task from a0 until the int3
                        at a4 - 1 traps (results: in the task's memory) */
  OP_SECCOMP_FILTER = 21, /* a0 index (0: the oldest) -> ret = the filter's flags (metadata),
                             data = its struct sock_filter[]; ENOENT past the newest */
};

/* One syscall of an OP_SYSCALLS batch: run in order, each whatever the others returned. */
struct batch_call {
  int64_t nr;
  int64_t args[6];
};

#define MAX_BATCH 512

struct request {
  uint32_t op;
  int32_t tid;
  int64_t a[18];
};

struct reply {
  int64_t ret;
  int32_t err;
  uint32_t len;
};

struct undo {
  uint64_t id;
  int64_t nr;
  int64_t args[6];
};

#define MAX_HELD_SIGNALS 64
/* 32 pipes of the one-copy dump (both ends each) and their scratch mapping, with room to spare. */
#define MAX_UNDOS 128
#define MAX_PIPES 64

struct tracee {
  int tid;
  struct user_regs_struct saved; /* at the freeze: what the task gets back */
  int at_syscall_stop;           /* a remote syscall left it at a syscall-exit stop */
  uint64_t gadget;               /* the syscall instruction its remote syscalls borrow */
  int held[MAX_HELD_SIGNALS];    /* signals that arrived while held; re-sent on release */
  int nheld;
  struct undo undos[MAX_UNDOS];
  int nundo;
  int kill_on_exit;              /* post-copy: another host runs the process now */
  uint64_t sigmask;              /* its own blocked set, read at the freeze; what it runs our code without */
  int raised;                    /* in SCHED_FIFO by us since the freeze: its own class below goes back at release */
  int policy;
  struct sched_param param;
};

/* TCP sockets in repair mode: the target's connections, frozen for the peer. */
#define MAX_REPAIR 1024
static struct { int64_t id; int fd; int reuse; } repairs[MAX_REPAIR];
static int nrepairs;
static int64_t next_repair_id = 1;

/* Network locks of those connections: scripts that remove them. */
#define MAX_UNLOCK 1024
static struct { int64_t id; int fd; int v6; } unlocks[MAX_UNLOCK];
static int nunlocks;
static int64_t next_unlock_id = 1;

/* Throttle cgroups (src/migrate/throttle.ts): each a child of the cgroup its tasks came from. */
#define MAX_THROTTLE 256
static struct { int64_t id; int fd; int64_t pid, start; } throttles[MAX_THROTTLE];
static int nthrottles;
static int64_t next_throttle_id = 1;

static struct tracee *tracees;
static int ntracees, captracees;
static uint64_t next_undo_id = 1;

static struct tracee *find(int tid) {
  for (int i = 0; i < ntracees; i++)
    if (tracees[i].tid == tid) return &tracees[i];
  return NULL;
}

static struct tracee *add(int tid) {
  if (ntracees == captracees) {
    int cap = captracees ? captracees * 2 : 64;
    struct tracee *n = realloc(tracees, (size_t)cap * sizeof *n);
    if (!n) return NULL;
    tracees = n;
    captracees = cap;
  }
  struct tracee *t = &tracees[ntracees++];
  memset(t, 0, sizeof *t);
  t->tid = tid;
  return t;
}

static void forget(struct tracee *t) {
  *t = tracees[--ntracees];
}

static void nap(long ns) {
  struct timespec ts = { 0, ns };
  nanosleep(&ts, NULL);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * waitpid with a deadline: 1 with *status, 0 on time-out, -errno on error.
 * Every stop of a tracee sends its tracer SIGCHLD (blocked in main): between
 * tries the guardian sleeps until one comes, so it sees a stop as soon as
 * the kernel reports it instead of at the end of a nap.
 */
static int wait_for(int tid, int64_t timeout_ms, int *status) {
  int64_t deadline = now_ms() + timeout_ms;
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  for (int spin = 0;; spin++) {
    int r = waitpid(tid, status, WNOHANG | __WALL);
    if (r == tid) return 1;
    if (r < 0 && errno != EINTR) return -errno;
    if (spin < 20) continue;
    int64_t left = deadline - now_ms();
    if (left <= 0) return 0;
    /* Wakes for any child's stop: the loop asks waitpid again. Capped, so a
     * SIGCHLD consumed by an earlier wait cannot make this one sleep long. */
    if (left > 2) left = 2;
    struct timespec ts = { 0, (long)left * 1000000 };
    sigtimedwait(&chld, NULL, &ts);
  }
}

static int exited(int status) {
  return WIFEXITED(status) || WIFSIGNALED(status);
}

static void hold_signal(struct tracee *t, int sig) {
  if (t->nheld < MAX_HELD_SIGNALS) t->held[t->nheld++] = sig;
}

/* Resumes to the next syscall stop (entry or exit); signals meanwhile are held back. */
static int step_to_syscall_stop(struct tracee *t, int64_t timeout_ms) {
  if (ptrace(PTRACE_SYSCALL, t->tid, 0, 0) == -1) return errno;
  for (;;) {
    int status;
    int r = wait_for(t->tid, timeout_ms, &status);
    if (r == 0) return G_TIMEOUT;
    if (r < 0) return -r;
    if (exited(status)) return G_EXITED;
    if (!WIFSTOPPED(status)) continue;
    int sig = WSTOPSIG(status);
    if (sig == (SIGTRAP | 0x80)) return 0;
    if ((status >> 16) == 0) hold_signal(t, sig);
    /* A group stop, a late trap or a held signal: step on. */
    if (ptrace(PTRACE_SYSCALL, t->tid, 0, 0) == -1) return errno;
  }
}

/*
 * While the task runs code of ours, every signal that can wait stays queued
 * in the kernel: a signal-delivery stop there could only be swallowed and
 * sent again at the release, and kill() keeps neither a queued signal's
 * value and sender nor its place in the queue; the image's pending list,
 * read from the kernel, would miss it too. The int3 that ends our code and
 * faults in it stay deliverable: a forced signal that is blocked makes the
 * kernel reset its handler to SIG_DFL, the program's handler lost.
 */
#define SIGBIT(s) (1ull << ((s) - 1))
#define FORCED_SIGNALS (SIGBIT(SIGTRAP) | SIGBIT(SIGSEGV) | SIGBIT(SIGBUS) | SIGBIT(SIGILL) | SIGBIT(SIGFPE) | SIGBIT(SIGSYS))

static int hold_signals(struct tracee *t) {
  uint64_t held = t->sigmask | ~FORCED_SIGNALS;
  return ptrace(PTRACE_SETSIGMASK, t->tid, 8, &held) == -1 ? errno : 0;
}

/* Once it is stopped again; a task that is not (a timeout) gets its mask back at the release. */
static void unhold_signals(struct tracee *t) {
  ptrace(PTRACE_SETSIGMASK, t->tid, 8, &t->sigmask);
}

static int64_t *arg_reg(struct user_regs_struct *r, int i) {
  switch (i) {
  case 0: return (int64_t *)&r->rdi;
  case 1: return (int64_t *)&r->rsi;
  case 2: return (int64_t *)&r->rdx;
  case 3: return (int64_t *)&r->r10;
  case 4: return (int64_t *)&r->r8;
  default: return (int64_t *)&r->r9;
  }
}

/* Runs one syscall in the frozen task at the borrowed `gadget`; *ret = raw rax. */
static int remote_syscall(struct tracee *t, uint64_t gadget, int64_t nr, const int64_t *args, int64_t timeout_ms, int64_t *ret) {
  struct user_regs_struct regs = t->saved;
  regs.rax = (uint64_t)nr;
  regs.orig_rax = (uint64_t)-1;
  regs.rip = gadget;
  for (int i = 0; i < 6; i++) *arg_reg(&regs, i) = args[i];
  if (ptrace(PTRACE_SETREGS, t->tid, 0, &regs) == -1) return errno;
  t->at_syscall_stop = 1;
  int e = hold_signals(t);
  if (!e) e = step_to_syscall_stop(t, timeout_ms); /* entry */
  if (!e) e = step_to_syscall_stop(t, timeout_ms); /* exit */
  if (e != G_TIMEOUT) unhold_signals(t);
  if (e) return e;
  if (ptrace(PTRACE_GETREGS, t->tid, 0, &regs) == -1) return errno;
  *ret = (int64_t)regs.rax;
  return 0;
}

static int is_error(int64_t r) {
  return r < 0 && r > -4096;
}

/*
 * The registers the task must resume with. At a syscall-exit stop the kernel
 * no longer restarts the syscall the task was frozen in, so do what it would
 * have done (as FrozenTask.release does for a direct tracee).
 */
static struct user_regs_struct resume_regs(const struct tracee *t) {
  struct user_regs_struct r = t->saved;
  if (!t->at_syscall_stop || (int64_t)r.orig_rax < 0) return r;
  int64_t code = -(int64_t)r.rax;
  if (code == 512 || code == 513 || code == 514 || code == 516) {
    r.rax = code == 516 ? SYS_restart_syscall : r.orig_rax;
    r.rip -= 2;
    r.orig_rax = (uint64_t)-1;
  }
  return r;
}

/*
 * From the syscall-exit stop of a remote syscall back to a stop inside the
 * signal path, with the registers of the freeze: there the kernel itself
 * decides, as the task resumes, whether the interrupted syscall restarts or
 * returns EINTR to a signal handler that runs first. (Restarting it by hand
 * would re-enter pause() after a handler already ran, and the program would
 * wait for a signal it has had.) Returns 0 when the task is back there.
 */
static int back_to_signal_stop(struct tracee *t) {
  if (ptrace(PTRACE_SETREGS, t->tid, 0, &t->saved) == -1) return -1;
  if (ptrace(PTRACE_INTERRUPT, t->tid, 0, 0) == -1) return -1;
  if (ptrace(PTRACE_CONT, t->tid, 0, 0) == -1) return -1;
  for (;;) {
    int status;
    int r = wait_for(t->tid, 10000, &status);
    if (r <= 0 || exited(status)) return -1;
    if (!WIFSTOPPED(status)) continue;
    int event = status >> 16;
    if (event == PTRACE_EVENT_STOP) return 0;
    /* A signal on the way: delivered as it would have been without us. */
    if (ptrace(PTRACE_CONT, t->tid, 0, event == 0 ? WSTOPSIG(status) : 0) == -1) return -1;
  }
}

/*
 * FREEZE with a2 = 1 (a copy-on-write dump's short window): the task runs
 * in SCHED_FIFO at priority 1 while it is ours. Frozen, it runs only the
 * stop itself, tsnap's remote syscalls and the release, each a wake-up; in
 * its own normal class it waited for a CPU behind every other session's
 * tasks (most of the longest windows, docs/performance.md). The guardian,
 * not tsnap, holds the class to give back: whatever happens to tsnap, the
 * release (or the guardian's own end) restores it before the detach.
 * Only from a normal class: a task already real-time is left alone.
 */
static int raise_class(int tid, int *policy, struct sched_param *param) {
  int pol = sched_getscheduler(tid);
  if (pol < 0 || (pol & ~SCHED_RESET_ON_FORK) == SCHED_FIFO || (pol & ~SCHED_RESET_ON_FORK) == SCHED_RR || (pol & ~SCHED_RESET_ON_FORK) > SCHED_IDLE) return 0;
  if (sched_getparam(tid, param) != 0) return 0;
  struct sched_param rt = { .sched_priority = 1 };
  if (sched_setscheduler(tid, SCHED_FIFO | SCHED_RESET_ON_FORK, &rt) != 0) return 0; /* best effort: no CAP_SYS_NICE */
  *policy = pol;
  return 1;
}

static void restore_class(int tid, int policy, const struct sched_param *param) {
  (void)sched_setscheduler(tid, policy, param);
}

/* Undoes what tsnap left in the task (newest first), puts it back and lets it go. */
static int release_one(struct tracee *t) {
  for (int i = t->nundo - 1; i >= 0; i--) {
    int64_t ignored;
    (void)remote_syscall(t, t->gadget, t->undos[i].nr, t->undos[i].args, 10000, &ignored);
  }
  t->nundo = 0;
  int e = 0;
  /* Before the task goes back to the signal path: what queued while we held it is delivered there, in order. */
  unhold_signals(t);
  if (!t->at_syscall_stop) {
    if (ptrace(PTRACE_SETREGS, t->tid, 0, &t->saved) == -1) e = errno;
  } else if (back_to_signal_stop(t) != 0) {
    /* Could not get back there: restart the syscall by hand instead. */
    struct user_regs_struct r = resume_regs(t);
    if (ptrace(PTRACE_SETREGS, t->tid, 0, &r) == -1) e = errno;
  }
  /* Else the registers are the freeze's already, or a signal handler's
   * frame the kernel set up on the way: left as they are. */
  if (t->raised) restore_class(t->tid, t->policy, &t->param);
  t->raised = 0;
  if (ptrace(PTRACE_DETACH, t->tid, 0, 0) == -1 && !e) e = errno;
  for (int i = 0; i < t->nheld; i++) kill(t->tid, t->held[i]);
  return e;
}

static int op_freeze(struct request *q, struct reply *p, uint8_t *data) {
  if (find(q->tid)) return EBUSY;
  /* Seccomp is suspended only once the task is stopped: between the seize
   * and the stop it runs its own code, which must stay under its filters. */
  long options = (long)q->a[0];
  if (ptrace(PTRACE_SEIZE, q->tid, 0, options & ~(long)PTRACE_O_SUSPEND_SECCOMP) == -1) return errno;
  /* Raised before the interrupt: the way to the stop is one wake-up too. */
  int policy = 0;
  struct sched_param param = { 0 };
  int raised = q->a[2] == 1 && raise_class(q->tid, &policy, &param);
  if (ptrace(PTRACE_INTERRUPT, q->tid, 0, 0) == -1) {
    int e = errno;
    if (raised) restore_class(q->tid, policy, &param);
    ptrace(PTRACE_DETACH, q->tid, 0, 0);
    return e;
  }
  int64_t deadline = now_ms() + q->a[1];
  for (;;) {
    int status;
    int64_t left = deadline - now_ms();
    int r = wait_for(q->tid, left > 0 ? left : 0, &status);
    if (r == 0) {
      /* Not stopped: its registers were never touched, so the kernel's
       * detach at our exit (if this one fails) is harmless. */
      if (raised) restore_class(q->tid, policy, &param);
      ptrace(PTRACE_DETACH, q->tid, 0, 0);
      return G_TIMEOUT;
    }
    if (r < 0) {
      if (raised) restore_class(q->tid, policy, &param);
      return -r;
    }
    if (exited(status)) return G_EXITED;
    if (!WIFSTOPPED(status)) continue;
    int event = status >> 16;
    if (event == PTRACE_EVENT_STOP) {
      /* SIGTRAP: our interrupt; a stop signal: the task was in a group stop. */
      p->ret = WSTOPSIG(status);
      break;
    }
    /* A signal-delivery stop before our trap: let the signal through as it
     * would have gone without us, and keep waiting for the trap. */
    ptrace(PTRACE_CONT, q->tid, 0, event == 0 ? WSTOPSIG(status) : 0);
  }
  if ((options & PTRACE_O_SUSPEND_SECCOMP) && ptrace(PTRACE_SETOPTIONS, q->tid, 0, options) == -1) {
    int e = errno;
    if (raised) restore_class(q->tid, policy, &param);
    ptrace(PTRACE_DETACH, q->tid, 0, 0);
    return e;
  }
  struct tracee *t = add(q->tid);
  if (!t) {
    if (raised) restore_class(q->tid, policy, &param);
    ptrace(PTRACE_DETACH, q->tid, 0, 0);
    return ENOMEM;
  }
  if (ptrace(PTRACE_GETREGS, q->tid, 0, &t->saved) == -1 || ptrace(PTRACE_GETSIGMASK, q->tid, 8, &t->sigmask) == -1) {
    int e = errno;
    if (raised) restore_class(q->tid, policy, &param);
    ptrace(PTRACE_DETACH, q->tid, 0, 0);
    forget(t);
    return e;
  }
  t->raised = raised;
  t->policy = policy;
  t->param = param;
  memcpy(data, &t->saved, sizeof t->saved);
  p->len = sizeof t->saved;
  return 0;
}

static int op_syscall(struct tracee *t, struct request *q, struct reply *p, uint8_t *data) {
  int64_t ret = 0;
  int e = remote_syscall(t, (uint64_t)q->a[0], q->a[1], &q->a[2], q->a[17] > 0 ? q->a[17] : 60000, &ret);
  if (e) return e;
  t->gadget = (uint64_t)q->a[0]; /* undo runs where this ran */
  p->ret = ret;
  uint64_t id = 0;
  if (!is_error(ret)) {
    if (q->a[16]) {
      for (int i = 0; i < t->nundo; i++) {
        if (t->undos[i].id == (uint64_t)q->a[16]) {
          memmove(&t->undos[i], &t->undos[i + 1], (size_t)(t->nundo - i - 1) * sizeof t->undos[0]);
          t->nundo--;
          break;
        }
      }
    }
    if (q->a[8] >= 0 && t->nundo < MAX_UNDOS) {
      struct undo *u = &t->undos[t->nundo++];
      u->id = id = next_undo_id++;
      u->nr = q->a[8];
      memcpy(u->args, &q->a[9], sizeof u->args);
      if (q->a[15] >= 0 && q->a[15] < 6) u->args[q->a[15]] = ret;
    }
  }
  memcpy(data, &id, 8);
  p->len = 8;
  return 0;
}

/*
 * pipe2() in the task with both ends on its undo list at once: the fds come
 * back through the task's memory, not rax, so OP_SYSCALL's undo (which
 * takes the result from rax) cannot name them, and a controller dying
 * between the call and a second request would leave them in the task.
 */
static int op_pipe(struct tracee *t, struct request *q, struct reply *p, uint8_t *data) {
  int64_t count = q->a[3] > 0 ? q->a[3] : 1;
  if (count > MAX_PIPES) return G_BADREQ;
  if (t->nundo + 2 > MAX_UNDOS) return ENOSPC;
  p->len = 0;
  /* As many as the undo list holds: each is made and put on it before the next, so a controller
   * dying at any point leaves only pipes the release closes. */
  for (int64_t k = 0; k < count && t->nundo + 2 <= MAX_UNDOS; k++) {
    uint64_t at = (uint64_t)q->a[1] + 8 * (uint64_t)k;
    int64_t args[6] = { (int64_t)at, q->a[2], 0, 0, 0, 0 };
    int64_t ret = 0;
    int e = remote_syscall(t, (uint64_t)q->a[0], SYS_pipe2, args, q->a[17] > 0 ? q->a[17] : 60000, &ret);
    if (e) return e;
    t->gadget = (uint64_t)q->a[0];
    p->ret = ret;
    if (is_error(ret)) return 0;
    int32_t fds[2];
    struct iovec local = { fds, sizeof fds }, remote = { (void *)(uintptr_t)at, sizeof fds };
    if (process_vm_readv(t->tid, &local, 1, &remote, 1, 0) != (ssize_t)sizeof fds) {
      /* Cannot happen for scratch tsnap mapped; the fds are unknown, so say so. */
      return EFAULT;
    }
    uint64_t ids[2];
    for (int i = 0; i < 2; i++) {
      struct undo *u = &t->undos[t->nundo++];
      memset(u, 0, sizeof *u);
      u->id = ids[i] = next_undo_id++;
      u->nr = SYS_close;
      u->args[0] = fds[i];
    }
    memcpy(data + p->len, fds, sizeof fds);
    memcpy(data + p->len + 8, ids, sizeof ids);
    p->len += 24;
  }
  return 0;
}

/* tsnap closed what these undos would close (one remote step for all): they must not run again. */
static int op_undo_drop(struct tracee *t, struct request *q, struct reply *p) {
  uint64_t first = (uint64_t)q->a[0], last = (uint64_t)q->a[1];
  int kept = 0;
  for (int i = 0; i < t->nundo; i++)
    if (t->undos[i].id < first || t->undos[i].id > last) t->undos[kept++] = t->undos[i];
  p->ret = t->nundo - kept;
  t->nundo = kept;
  return 0;
}

/* Runs each call of the batch in turn; a failed call is an answer like any other, a lost tracee ends the batch. */
static int op_syscalls(struct tracee *t, struct request *q, const struct batch_call *calls, struct reply *p, uint8_t *data) {
  int64_t n = q->a[1];
  if (n < 0 || n > MAX_BATCH) return G_BADREQ;
  int64_t timeout = q->a[17] > 0 ? q->a[17] : 60000;
  int64_t *rets = (int64_t *)data;
  for (int64_t i = 0; i < n; i++) {
    int e = remote_syscall(t, (uint64_t)q->a[0], calls[i].nr, calls[i].args, timeout, &rets[i]);
    if (e) return e;
  }
  t->gadget = (uint64_t)q->a[0];
  p->ret = n;
  p->len = (uint32_t)(n * 8);
  return 0;
}

/*
 * Runs code tsnap wrote into a scratch mapping of the task (a loop of
 * syscalls over a table) until its final int3: one resume and one stop for
 * the whole loop, where OP_SYSCALLS takes two stops per syscall. Signals
 * that come meanwhile are held, as for a remote syscall; a fault inside the
 * code ends the run with EFAULT (the task keeps the freeze's registers).
 */
static int run_to_end(struct tracee *t, uint64_t code, uint64_t end, int64_t timeout);

static int op_run(struct tracee *t, struct request *q) {
  struct user_regs_struct regs = t->saved;
  regs.rip = (uint64_t)q->a[0];
  regs.rbx = (uint64_t)q->a[1];
  regs.r12 = (uint64_t)q->a[2];
  regs.orig_rax = (uint64_t)-1;
  uint64_t code = (uint64_t)q->a[3], end = (uint64_t)q->a[4];
  int64_t timeout = q->a[17] > 0 ? q->a[17] : 60000;
  if (ptrace(PTRACE_SETREGS, t->tid, 0, &regs) == -1) return errno;
  /* As after a remote syscall: the freeze's syscall restart is the release's to redo. */
  t->at_syscall_stop = 1;
  int e = hold_signals(t);
  if (!e) e = run_to_end(t, code, end, timeout);
  if (e != G_TIMEOUT) unhold_signals(t);
  return e;
}

static int run_to_end(struct tracee *t, uint64_t code, uint64_t end, int64_t timeout) {
  if (ptrace(PTRACE_CONT, t->tid, 0, 0) == -1) return errno;
  for (;;) {
    int status;
    int r = wait_for(t->tid, timeout, &status);
    if (r == 0) return G_TIMEOUT;
    if (r < 0) return -r;
    if (exited(status)) return G_EXITED;
    if (!WIFSTOPPED(status)) continue;
    int sig = WSTOPSIG(status);
    if ((status >> 16) == 0) {
      struct user_regs_struct now;
      if (ptrace(PTRACE_GETREGS, t->tid, 0, &now) == -1) return errno;
      if (sig == SIGTRAP && now.rip == end) return 0;
      if ((sig == SIGSEGV || sig == SIGBUS || sig == SIGILL) && now.rip >= code && now.rip < end) return EFAULT;
      hold_signal(t, sig);
    }
    if (ptrace(PTRACE_CONT, t->tid, 0, 0) == -1) return errno;
  }
}

static int op_kill(struct request *q) {
  int n = (int)q->a[1];
  if (n < 0 || n > 16) return G_BADREQ;
  if (q->a[0] > 0) kill((pid_t)q->a[0], SIGKILL);
  for (int i = 0; i < n; i++) {
    int tid = (int)q->a[2 + i];
    struct tracee *t = find(tid);
    if (t) forget(t);
    for (;;) {
      int status;
      int r = waitpid(tid, &status, __WALL);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 || exited(status)) break;
    }
  }
  return 0;
}

static int op_peeksiginfo(int tid, int shared, struct reply *p, uint8_t *data) {
  uint32_t off = 0;
  for (;;) {
    struct { uint64_t off; uint32_t flags; int32_t nr; } args = { off, shared ? 1u : 0u, 32 };
    if ((off + 32) * SIGINFO_SIZE > MAX_DATA) return E2BIG;
    long n = ptrace(PTRACE_PEEKSIGINFO, tid, &args, data + (size_t)off * SIGINFO_SIZE);
    if (n < 0) return errno;
    off += (uint32_t)n;
    if (n < 32) break;
  }
  p->len = off * SIGINFO_SIZE;
  return 0;
}

static int op_repair_hold(int fd, struct reply *p) {
  if (fd < 0) return G_BADREQ;
  if (nrepairs == MAX_REPAIR) { close(fd); return ENOMEM; }
  repairs[nrepairs].id = next_repair_id++;
  repairs[nrepairs].fd = fd;
  /* Held before repair mode goes on, which takes the port over; leaving it
   * clears SO_REUSEADDR, so what the program had is kept to put back. */
  int reuse = 0;
  socklen_t len = sizeof reuse;
  if (getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, &len) != 0) reuse = 0;
  repairs[nrepairs].reuse = reuse;
  p->ret = repairs[nrepairs++].id;
  return 0;
}

static int op_repair_drop(int64_t id) {
  for (int i = 0; i < nrepairs; i++) {
    if (repairs[i].id == id) {
      close(repairs[i].fd);
      repairs[i] = repairs[--nrepairs];
      return 0;
    }
  }
  return G_UNKNOWN;
}

/* Repair mode off without a window probe: as far as the peer knows, nothing happened. */
static void end_repairs(void) {
  int off = -1; /* TCP_REPAIR_OFF_NO_WP */
  for (int i = 0; i < nrepairs; i++) {
    setsockopt(repairs[i].fd, IPPROTO_TCP, TCP_REPAIR, &off, sizeof off);
    if (repairs[i].reuse) setsockopt(repairs[i].fd, SOL_SOCKET, SO_REUSEADDR, &repairs[i].reuse, sizeof repairs[i].reuse);
    close(repairs[i].fd);
  }
  nrepairs = 0;
}

static int op_unlock_hold(int fd, int64_t v6, struct reply *p) {
  if (fd < 0) return G_BADREQ;
  if (nunlocks == MAX_UNLOCK) { close(fd); return ENOMEM; }
  unlocks[nunlocks].id = next_unlock_id++;
  unlocks[nunlocks].fd = fd;
  unlocks[nunlocks].v6 = v6 != 0;
  p->ret = unlocks[nunlocks++].id;
  return 0;
}

static int op_unlock_drop(int64_t id) {
  for (int i = 0; i < nunlocks; i++) {
    if (unlocks[i].id == id) {
      close(unlocks[i].fd);
      unlocks[i] = unlocks[--nunlocks];
      return 0;
    }
  }
  return G_UNKNOWN;
}

/* The peer may talk to the connection again: each script runs as
 * `iptables-restore -w --noflush < script`. */
static void end_unlocks(void) {
  for (int i = 0; i < nunlocks; i++) {
    pid_t pid = fork();
    if (pid == 0) {
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, NULL);
      lseek(unlocks[i].fd, 0, SEEK_SET);
      dup2(unlocks[i].fd, 0);
      int null = open("/dev/null", O_WRONLY);
      if (null >= 0) { dup2(null, 1); dup2(null, 2); }
      const char *tool = unlocks[i].v6 ? "ip6tables-restore" : "iptables-restore";
      execlp(tool, tool, "-w", "--noflush", (char *)NULL);
      _exit(127);
    }
    if (pid > 0) while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    close(unlocks[i].fd);
  }
  nunlocks = 0;
}

static int op_throttle_hold(int fd, int64_t pid, int64_t start, struct reply *p) {
  if (fd < 0 || pid <= 0 || start < 0) { if (fd >= 0) close(fd); return G_BADREQ; }
  if (nthrottles == MAX_THROTTLE) { close(fd); return ENOMEM; }
  throttles[nthrottles].id = next_throttle_id++;
  throttles[nthrottles].fd = fd;
  throttles[nthrottles].pid = pid;
  throttles[nthrottles].start = start;
  p->ret = throttles[nthrottles++].id;
  return 0;
}

static int op_throttle_drop(int64_t id) {
  for (int i = 0; i < nthrottles; i++) {
    if (throttles[i].id == id) {
      close(throttles[i].fd);
      throttles[i] = throttles[--nthrottles];
      return 0;
    }
  }
  return G_UNKNOWN;
}

/* Moves every task of child "tasks" to the parent's; 1 when the child was found empty. */
static int move_tasks_up(int dirfd, const char *child) {
  char path[96], buf[8192];
  snprintf(path, sizeof path, "%s/tasks", child);
  int in = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
  if (in < 0) return 1;
  ssize_t n = read(in, buf, sizeof buf - 1);
  close(in);
  if (n <= 0) return 1;
  buf[n] = 0;
  int out = openat(dirfd, "tasks", O_WRONLY | O_CLOEXEC);
  if (out < 0) return 1;
  for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
    /* One write per task: the kernel moves one tid per write. */
    if (write(out, line, strlen(line)) < 0) { /* gone meanwhile */ }
  }
  close(out);
  return 0;
}

/* A throttled target must never stay throttled: quota off first, then everyone back where it was. */
static void end_throttles(void) {
  for (int i = 0; i < nthrottles; i++) {
    char child[64], path[96];
    snprintf(child, sizeof child, "tsnap-throttle-%lld.%lld", (long long)throttles[i].pid, (long long)throttles[i].start);
    snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", child);
    int q = openat(throttles[i].fd, path, O_WRONLY | O_CLOEXEC);
    if (q >= 0) { if (write(q, "-1", 2) < 0) { /* nothing better to do */ } close(q); }
    /* Threads the target creates meanwhile land in the child: go round until it is empty. */
    for (int round = 0; round < 1000 && !move_tasks_up(throttles[i].fd, child); round++) {}
    for (int tries = 0; tries < 100 && unlinkat(throttles[i].fd, child, AT_REMOVEDIR) != 0 && errno == EBUSY; tries++) {
      move_tasks_up(throttles[i].fd, child);
      nap(10000000);
    }
    close(throttles[i].fd);
  }
  nthrottles = 0;
}

static int handle(struct request *q, const struct batch_call *calls, int fd, struct reply *p, uint8_t *data) {
  p->ret = 0;
  p->len = 0;
  if (q->op == OP_REPAIR_HOLD) return op_repair_hold(fd, p);
  if (q->op == OP_UNLOCK_HOLD) return op_unlock_hold(fd, q->a[0], p);
  if (q->op == OP_THROTTLE_HOLD) return op_throttle_hold(fd, q->a[0], q->a[1], p);
  if (fd >= 0) close(fd);
  if (q->op == OP_THROTTLE_DROP) return op_throttle_drop(q->a[0]);
  if (q->op == OP_REPAIR_DROP) return op_repair_drop(q->a[0]);
  if (q->op == OP_UNLOCK_DROP) return op_unlock_drop(q->a[0]);
  if (q->op == OP_HELLO) {
    p->ret = PROTOCOL_VERSION;
    return 0;
  }
  if (q->op == OP_FREEZE) return op_freeze(q, p, data);
  if (q->op == OP_KILL) return op_kill(q);
  struct tracee *t = find(q->tid);
  if (!t) return G_UNKNOWN;
  switch (q->op) {
  case OP_KILL_ON_EXIT:
    t->kill_on_exit = 1;
    return 0;
  case OP_RELEASE: {
    int e = release_one(t);
    forget(t);
    return e;
  }
  case OP_GETREGS:
    if (ptrace(PTRACE_GETREGS, t->tid, 0, data) == -1) return errno;
    p->len = sizeof(struct user_regs_struct);
    return 0;
  case OP_GETXSTATE: {
    struct iovec iov = { data, XSTATE_MAX };
    if (ptrace(PTRACE_GETREGSET, t->tid, NT_X86_XSTATE_, &iov) == -1) return errno;
    p->len = (uint32_t)iov.iov_len;
    return 0;
  }
  case OP_GETSIGMASK:
    if (ptrace(PTRACE_GETSIGMASK, t->tid, 8, data) == -1) return errno;
    p->len = 8;
    return 0;
  case OP_PEEKSIGINFO:
    return op_peeksiginfo(t->tid, (int)q->a[0], p, data);
  case OP_GETRSEQ: {
    long r = ptrace(PTRACE_GET_RSEQ_CONFIGURATION, t->tid, 32, data);
    if (r == -1) return errno;
    p->len = 32;
    return 0;
  }
  case OP_SECCOMP_FILTER: {
    long n = ptrace(PTRACE_SECCOMP_GET_FILTER, t->tid, (long)q->a[0], data);
    if (n == -1) return errno;
    uint64_t meta[2] = { (uint64_t)q->a[0], 0 };
    if (ptrace(PTRACE_SECCOMP_GET_METADATA, t->tid, sizeof meta, meta) == -1) return errno;
    p->ret = (int64_t)meta[1];
    p->len = (uint32_t)(n * 8);
    return 0;
  }
  case OP_SYSCALL:
    return op_syscall(t, q, p, data);
  case OP_SYSCALLS:
    return op_syscalls(t, q, calls, p, data);
  case OP_RUN:
    return op_run(t, q);
  case OP_PIPE:
    return op_pipe(t, q, p, data);
  case OP_UNDO_DROP:
    return op_undo_drop(t, q, p);
  default:
    return G_BADREQ;
  }
}

int main(void) {
  /* Terminal and hang-up signals are for tsnap: the guardian must outlive
   * it to put things back. Only SIGKILL ends it early. */
  signal(SIGINT, SIG_IGN);
  signal(SIGTERM, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  prctl(PR_SET_NAME, "tsnap-guardian");
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  static uint8_t out[sizeof(struct reply) + MAX_DATA];
  static struct { struct request q; struct batch_call calls[MAX_BATCH]; } in;
  for (;;) {
    struct request *qp = &in.q;
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } ctl;
    struct iovec iov = { &in, sizeof in };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &ctl, .msg_controllen = sizeof ctl };
    ssize_t n = recvmsg(CONTROL_FD, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break; /* the controller is gone */
    int fd = -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(sizeof(int)))
      memcpy(&fd, CMSG_DATA(c), sizeof fd);
    struct reply *p = (struct reply *)out;
    int batch = n >= (ssize_t)sizeof in.q && qp->op == OP_SYSCALLS;
    if (batch ? (qp->a[1] < 0 || qp->a[1] > MAX_BATCH || n != (ssize_t)(sizeof in.q + (size_t)qp->a[1] * sizeof in.calls[0]))
              : n != (ssize_t)sizeof in.q) {
      if (fd >= 0) close(fd);
      p->ret = -1; p->err = G_BADREQ; p->len = 0;
    } else {
      int e = handle(qp, in.calls, fd, p, out + sizeof *p);
      if (e) { p->ret = -1; p->err = e; p->len = 0; } else p->err = 0;
    }
    if (send(CONTROL_FD, out, sizeof *p + p->len, MSG_NOSIGNAL) < 0) break;
  }
  /* Put back everything still held, as it was at the freeze. */
  end_throttles();
  end_repairs();
  end_unlocks();
  while (ntracees > 0) {
    struct tracee *t = &tracees[ntracees - 1];
    if (t->kill_on_exit) kill(t->tid, SIGKILL);
    else release_one(t);
    forget(t);
  }
  return 0;
}

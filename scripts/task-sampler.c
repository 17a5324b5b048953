// A sampler of tsnap's threads, for stalls that a profiler of one process
// cannot see (a thread blocked in the kernel, or waiting for a CPU).
// Every N ms (argv[1], default 5), for every task whose comm starts with
// node, workload, tsnap, libuv or V8 (or any of argv[2..]: e.g. cowbench
// khugepaged kcompactd), one line when it ran, waited or is
// not sleeping:
//   t_ms(CLOCK_MONOTONIC, as TSNAP_TRACE) pid tid comm state p<policy> c<cpu> r<run us> w<runqueue wait us>
// and, for a task in D, its kernel stack (/proc/PID/task/TID/stack: root)
// on a line "  STACK tid frame|frame|...". Build and run beside a bench:
//   gcc -O2 -o /tmp/task-sampler scripts/task-sampler.c
//   /tmp/task-sampler 5 > /tmp/ts.log & ... ; kill %1
// docs/performance.md ("The post-copy stall found") shows what it found.
// argv[2] (optional): a comm prefix (e.g. workload) whose sleeping threads
// are watched too: one that has not run for 30 ms or more gets its kernel
// stack printed ("  IDLE tid ms frame|..."), again whenever it changes, so
// a thread parked in the kernel shows where (a wait in S is not a D).
// A thread in a real-time class that ran most of an interval gets a line
// "  HOT tid u<ticks> s<ticks> syscall <nr|running> <kernel stack>": run
// the sampler itself real-time (chrt -f 50) to see such threads at all.
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#include <sys/wait.h>
#include <sched.h>
#define MAXP 4194304
int main(int argc, char **argv) {
  int ms = argc > 1 ? atoi(argv[1]) : 5;
  unsigned long long *lr = calloc(MAXP, 8), *lw = calloc(MAXP, 8);
  const char *idle = argc > 2 ? argv[2] : NULL;
  double *ran = calloc(MAXP, sizeof(double));
  unsigned *lastk = calloc(MAXP, sizeof(unsigned));
  unsigned long long *lu = calloc(MAXP, 8), *ls = calloc(MAXP, 8);
  // SAMPLER_SIGNAL_HOT_MS=N: a real-time thread hot that long gets SIGUSR2 sent to its
  // process once (with NODE_OPTIONS=--report-on-signal, Node writes its JS stack).
  const char *hs = getenv("SAMPLER_SIGNAL_HOT_MS"); double hot_ms = hs ? atof(hs) : 0;
  double *hot_since = calloc(MAXP, sizeof(double)); char *signalled = calloc(MAXP, 1);
  static char out[1 << 20];
  setvbuf(stdout, out, _IOFBF, sizeof out);
  for (;;) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    double now = ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
    DIR *d = opendir("/proc"); struct dirent *e;
    while ((e = readdir(d))) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      char p[300]; snprintf(p, sizeof p, "/proc/%s/task", e->d_name);
      DIR *t = opendir(p); if (!t) continue; struct dirent *f;
      while ((f = readdir(t))) {
        if (f->d_name[0] < '0' || f->d_name[0] > '9') continue;
        char sp[600]; snprintf(sp, sizeof sp, "/proc/%s/task/%s/stat", e->d_name, f->d_name);
        FILE *s = fopen(sp, "r"); if (!s) continue;
        char buf[1024]; size_t n = fread(buf, 1, sizeof buf - 1, s); fclose(s); buf[n] = 0;
        char *rp = strrchr(buf, ')'), *lpn = strchr(buf, '('); if (!rp || !lpn) continue;
        char comm[32]; int cl = rp - lpn - 1; if (cl > 31) cl = 31; memcpy(comm, lpn + 1, cl); comm[cl] = 0;
        int want = !strncmp(comm, "node", 4) || !strncmp(comm, "workload", 8) || !strncmp(comm, "tsnap", 5) || !strncmp(comm, "libuv", 5) || !strncmp(comm, "V8", 2);
        for (int a = 2; a < argc && !want; a++) want = !strncmp(comm, argv[a], strlen(argv[a]));
        if (!want) continue;
        char state = rp[2];
        int field = 3; char *save, *tok; unsigned long long pol = 0, cpu = 0, ut = 0, st = 0;
        for (tok = strtok_r(rp + 2, " ", &save); tok; tok = strtok_r(NULL, " ", &save), field++) { if (field == 14) ut = strtoull(tok, 0, 10); if (field == 15) st = strtoull(tok, 0, 10); if (field == 39) cpu = strtoull(tok, 0, 10); if (field == 41) { pol = strtoull(tok, 0, 10); break; } }
        int tid = atoi(f->d_name); if (tid >= MAXP) continue;
        snprintf(sp, sizeof sp, "/proc/%s/task/%s/schedstat", e->d_name, f->d_name);
        s = fopen(sp, "r"); if (!s) continue; unsigned long long r = 0, w = 0; if (fscanf(s, "%llu %llu", &r, &w) != 2) r = w = 0; fclose(s);
        unsigned long long dr = lr[tid] ? r - lr[tid] : 0, dw = lw[tid] ? w - lw[tid] : 0; int first = !lr[tid]; lr[tid] = r ? r : 1; lw[tid] = w;
        if (first || dr > 0 || dw > 0 || state == 'R' || state == 'D' || state == 't' || state == 'T')
          { printf("%.1f %s %d %s %c p%llu c%llu r%llu w%llu\n", now, e->d_name, tid, comm, state, pol, cpu, dr / 1000, dw / 1000);
            if (dr > 0 || first) ran[tid] = now;
            // A real-time thread that ran most of the interval: user or kernel time (clock ticks), and where.
            if (pol != 0 && !first && dr > (unsigned long long)ms * 600000ull) {
              char kp[600], sc[128] = ""; snprintf(kp, sizeof kp, "/proc/%s/task/%s/syscall", e->d_name, f->d_name);
              FILE *k = fopen(kp, "r"); if (k) { if (!fgets(sc, sizeof sc, k)) sc[0] = 0; fclose(k); char *sp2 = strchr(sc, ' '); if (sp2) *sp2 = 0; char *nl = strchr(sc, '\n'); if (nl) *nl = 0; }
              snprintf(kp, sizeof kp, "/proc/%s/task/%s/stack", e->d_name, f->d_name); char kb[2048] = ""; k = fopen(kp, "r");
              if (k) { size_t kn = fread(kb, 1, sizeof kb - 1, k); fclose(k); kb[kn] = 0; for (char *c = kb; *c; c++) if (*c == '\n') *c = '|'; }
              printf("  HOT %d u%llu s%llu syscall %s %s\n", tid, ut - lu[tid], st - ls[tid], sc, kb);
              if (!hot_since[tid]) hot_since[tid] = now;
              if (hot_ms > 0 && !signalled[tid] && now - hot_since[tid] >= hot_ms) { signalled[tid] = 1; kill(atoi(e->d_name), SIGUSR2); printf("  SIGNALLED %s (tid %d hot %.0f ms)\n", e->d_name, tid, now - hot_since[tid]);
                // SAMPLER_PERF_DIR=D as well: 300 ms of `perf record -g` of that thread into D/perf-TID.data.
                const char *pd = getenv("SAMPLER_PERF_DIR");
                if (pd && fork() == 0) { struct sched_param sp0 = { 0 }; sched_setscheduler(0, SCHED_OTHER, &sp0); /* perf must not inherit the real-time class: run so, it spun both CPUs for 14 minutes */ char out[700], t[32]; snprintf(out, sizeof out, "%s/perf-%d.data", pd, tid); snprintf(t, sizeof t, "%d", tid);
                  execlp("perf", "perf", "record", "-q", "-g", "-t", t, "-o", out, "--", "sleep", "0.3", (char *)0); _exit(127); } }
            } else hot_since[tid] = 0;
            if (state == 'D') { char kp[600]; snprintf(kp, sizeof kp, "/proc/%s/task/%s/stack", e->d_name, f->d_name); FILE *k = fopen(kp, "r"); if (k) { char kb[4096]; size_t kn = fread(kb, 1, sizeof kb - 1, k); fclose(k); kb[kn] = 0; for (char *c = kb; *c; c++) if (*c == '\n') *c = '|'; printf("  STACK %d %s\n", tid, kb); } } }
        lu[tid] = ut; ls[tid] = st;
        if (idle && !strncmp(comm, idle, strlen(idle)) && dr == 0 && !first && ran[tid] > 0 && now - ran[tid] >= 30) {
          char kp[600]; snprintf(kp, sizeof kp, "/proc/%s/task/%s/stack", e->d_name, f->d_name); FILE *k = fopen(kp, "r");
          if (k) { char kb[4096]; size_t kn = fread(kb, 1, sizeof kb - 1, k); fclose(k); kb[kn] = 0; unsigned h = 5381; for (char *c = kb; *c; c++) { if (*c == '\n') *c = '|'; h = h * 33 + (unsigned char)*c; }
            if (h != lastk[tid]) { lastk[tid] = h; printf("%.1f IDLE %d %.0f %c %s\n", now, tid, now - ran[tid], state, kb); } }
        }
      }
      closedir(t);
    }
    closedir(d);
    fflush(stdout);
    while (waitpid(-1, 0, WNOHANG) > 0) {}
    usleep(ms * 1000);
  }
}

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
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#define MAXP 4194304
int main(int argc, char **argv) {
  int ms = argc > 1 ? atoi(argv[1]) : 5;
  unsigned long long *lr = calloc(MAXP, 8), *lw = calloc(MAXP, 8);
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
        int field = 3; char *save, *tok; unsigned long long pol = 0, cpu = 0;
        for (tok = strtok_r(rp + 2, " ", &save); tok; tok = strtok_r(NULL, " ", &save), field++) { if (field == 39) cpu = strtoull(tok, 0, 10); if (field == 41) { pol = strtoull(tok, 0, 10); break; } }
        int tid = atoi(f->d_name); if (tid >= MAXP) continue;
        snprintf(sp, sizeof sp, "/proc/%s/task/%s/schedstat", e->d_name, f->d_name);
        s = fopen(sp, "r"); if (!s) continue; unsigned long long r = 0, w = 0; if (fscanf(s, "%llu %llu", &r, &w) != 2) r = w = 0; fclose(s);
        unsigned long long dr = lr[tid] ? r - lr[tid] : 0, dw = lw[tid] ? w - lw[tid] : 0; int first = !lr[tid]; lr[tid] = r ? r : 1; lw[tid] = w;
        if (first || dr > 0 || dw > 0 || state == 'R' || state == 'D' || state == 't' || state == 'T')
          { printf("%.1f %s %d %s %c p%llu c%llu r%llu w%llu\n", now, e->d_name, tid, comm, state, pol, cpu, dr / 1000, dw / 1000);
            if (state == 'D') { char kp[600]; snprintf(kp, sizeof kp, "/proc/%s/task/%s/stack", e->d_name, f->d_name); FILE *k = fopen(kp, "r"); if (k) { char kb[4096]; size_t kn = fread(kb, 1, sizeof kb - 1, k); fclose(k); kb[kn] = 0; for (char *c = kb; *c; c++) if (*c == '\n') *c = '|'; printf("  STACK %d %s\n", tid, kb); } } }
      }
      closedir(t);
    }
    closedir(d);
    fflush(stdout);
    usleep(ms * 1000);
  }
}

/*
 * tsnap-lazyguard: keeps a lazily restored process from reading wrong memory
 * when its pager dies.
 *
 * Why: the pager holds the process's userfaultfd. Should the pager die (a
 * crash, SIGKILL, the OOM killer), the last close of that uffd unregisters
 * every range and the pages not filled yet would read as zeros: the process
 * would run on with silently corrupted memory. The guard holds a copy of
 * each uffd, so that the ranges stay registered (a fault then waits instead
 * of reading zero), and kills the process (its children first) as soon as
 * the pager is gone without saying it finished: loud and bounded.
 *
 * Protocol, on stdin (the pager holds the write end; tsnap hands it over to
 * a background pager with the uffds):
 *   "arm <tsnap pid> <fd>...\n"  take these fds of process <tsnap pid> with
 *                                pidfd_getfd: pidfds of the targets first,
 *                                then their uffds ("-" between the two);
 *                                answer "armed\n" on stdout
 *   "D"                          every page is in: exit, dropping the copies
 *   "K"                          the pager cannot go on: kill now
 *   end of file without "D"      the pager died: kill
 * A target that exits by itself ends the guard too.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAXFD 256

static int targets[MAXFD], ntargets;
static int target_pids[MAXFD];
static int uffds[MAXFD], nuffds;

static void say(const char *msg)
{
    dprintf(2, "tsnap-lazyguard: %s\n", msg);
}

/* Children first: a child forked before the fill ended has lazy memory too. */
static void kill_tree(int pid, int depth)
{
    char path[64];
    if (depth > 64)
        return;
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char cpath[300];
            snprintf(cpath, sizeof cpath, "/proc/%d/task/%s/children", pid, e->d_name);
            FILE *f = fopen(cpath, "r");
            if (!f)
                continue;
            int child;
            while (fscanf(f, "%d", &child) == 1)
                kill_tree(child, depth + 1);
            fclose(f);
        }
        closedir(d);
    }
    kill(pid, SIGKILL);
}

static void kill_all(const char *why)
{
    for (int i = 0; i < ntargets; i++) {
        if (target_pids[i] <= 0)
            continue;
        char msg[512];
        snprintf(msg, sizeof msg, "%s: killing process %d (and its children), whose memory is not all in", why, target_pids[i]);
        say(msg);
        kill_tree(target_pids[i], 0);
    }
}

static int pid_of_pidfd(int tsnap, int fd)
{
    char path[96], line[128];
    snprintf(path, sizeof path, "/proc/%d/fdinfo/%d", tsnap, fd);
    FILE *f = fopen(path, "r");
    int pid = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Pid: %d", &pid) == 1)
            break;
    fclose(f);
    return pid;
}

static int arm(char *line)
{
    char *save = NULL;
    char *tok = strtok_r(line, " \n", &save);
    if (!tok || strcmp(tok, "arm"))
        return -1;
    tok = strtok_r(NULL, " \n", &save);
    if (!tok)
        return -1;
    int tsnap = atoi(tok);
    int pidfd = (int)syscall(SYS_pidfd_open, tsnap, 0);
    if (pidfd < 0)
        return -1;
    int after_dash = 0;
    while ((tok = strtok_r(NULL, " \n", &save))) {
        if (!strcmp(tok, "-")) {
            after_dash = 1;
            continue;
        }
        int theirs = atoi(tok);
        int fd = (int)syscall(SYS_pidfd_getfd, pidfd, theirs, 0);
        if (fd < 0)
            return -1;
        if (!after_dash && ntargets < MAXFD) {
            target_pids[ntargets] = pid_of_pidfd(tsnap, theirs);
            targets[ntargets++] = fd;
        } else if (after_dash && nuffds < MAXFD) {
            uffds[nuffds++] = fd;
        }
    }
    close(pidfd);
    return ntargets > 0 ? 0 : -1;
}

int main(void)
{
    char line[4096];
    size_t have = 0;
    /* Unarmed, it guards nothing: it goes with tsnap at once (a spare one
       started ahead, guard-spawn.ts) instead of when it reads the end of
       its stdin. Armed, it must outlive tsnap: cleared then. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* The arm line. */
    for (;;) {
        ssize_t n = read(0, line + have, sizeof line - 1 - have);
        if (n <= 0)
            return 0; /* tsnap went away before arming: nothing is lazy yet */
        have += (size_t)n;
        if (memchr(line, '\n', have) || have == sizeof line - 1)
            break;
    }
    line[have] = 0;
    char *rest = strchr(line, '\n');
    if (rest)
        *rest++ = 0;
    if (arm(line) < 0) {
        say("cannot take the userfaultfds to guard");
        return 2;
    }
    prctl(PR_SET_PDEATHSIG, 0);
    if (write(1, "armed\n", 6) != 6)
        return 2;
    /* A "D" or "K" may have come with the arm line. */
    for (char *c = rest; c && *c; c++) {
        if (*c == 'D')
            return 0;
        if (*c == 'K') {
            kill_all("the lazy pager gave up");
            return 1;
        }
    }
    struct pollfd p[MAXFD + 1];
    for (;;) {
        p[0].fd = 0;
        p[0].events = POLLIN;
        for (int i = 0; i < ntargets; i++) {
            p[i + 1].fd = targets[i];
            p[i + 1].events = POLLIN;
        }
        if (poll(p, (nfds_t)ntargets + 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 2;
        }
        /* An ended target's memory does not matter any more. */
        int alive = 0;
        for (int i = 0; i < ntargets; i++) {
            if (targets[i] >= 0 && p[i + 1].revents) {
                close(targets[i]);
                targets[i] = -1;
                target_pids[i] = -1;
            }
            alive += targets[i] >= 0;
        }
        if (!alive)
            return 0;
        if (p[0].revents) {
            char c;
            ssize_t n = read(0, &c, 1);
            if (n == 1 && c == 'D')
                return 0;
            if (n == 1 && c == 'K') {
                kill_all("the lazy pager gave up");
                return 1;
            }
            if (n == 0) {
                kill_all("the lazy pager died before the fill ended");
                return 1;
            }
        }
    }
}

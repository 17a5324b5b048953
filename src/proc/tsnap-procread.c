/*
 * One read of a whole procfs file on libuv's pool (src/sys/proc-read.ts,
 * through koffi's `.async`): /proc/PID/smaps, whose page-table walk is the
 * longest single step of a frozen large process, read beside the main
 * thread's remote syscalls. A seq_file answers each read() with a page or
 * so; the loop is here so that the whole file is one job of the pool, not
 * one round trip through the main thread per read (the main thread is
 * busy meanwhile). Why not a node worker thread (what it was): a second V8
 * isolate, ~2.4 MiB of the tool's peak RSS (issue 14, requirement 5).
 */
#include <errno.h>
#include <stddef.h>
#include <unistd.h>

/* Reads fd into buf until EOF or len bytes: the bytes read, or -errno. */
long tsnap_read_all(int fd, void *buf, size_t len) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = read(fd, (char *)buf + done, len - done);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    done += (size_t)n;
  }
  return (long)done;
}

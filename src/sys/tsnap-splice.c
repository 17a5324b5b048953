/*
 * splice(2) of several pipes into one file, each at its own offset, in one
 * call that tsnap makes through koffi's `.async` (src/sys/splice.ts,
 * splicePipesAsync): it runs on a thread of libuv's pool, so the one-copy
 * dump fills its second pages file there while the main thread fills the
 * first. Two threads writing one file would only take turns (each write
 * holds the file's inode lock: measured here, 2 threads into 1 tmpfs file
 * cost twice the CPU for 1.3x the speed, into 2 files 2.3x the speed for
 * the same CPU), hence a file each. Built into libtsnap-crc32.so beside
 * the CRC (package.json, build:native): one library to load.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <unistd.h>

/*
 * For i < n: moves lens[i] bytes from pipes[i] into fd at positions[i].
 * done[i] gets the bytes moved, or -errno where it stopped (an empty pipe
 * before the end is -EAGAIN: the pipes are non-blocking and must hold the
 * bytes already). Stops at the first failure (done[] of the rest: 0).
 * Returns 0, or -1 after a failure.
 */
int tsnap_splice_pipes(const int32_t *pipes, int fd, const int64_t *positions, const int64_t *lens, uint32_t n, int64_t *done) {
  for (uint32_t i = 0; i < n; i++) done[i] = 0;
  for (uint32_t i = 0; i < n; i++) {
    __off64_t off = positions[i];
    int64_t moved = 0;
    while (moved < lens[i]) {
      ssize_t r = splice(pipes[i], NULL, fd, &off, (size_t)(lens[i] - moved), SPLICE_F_MOVE);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        done[i] = r < 0 ? -errno : -EAGAIN;
        return -1;
      }
      moved += r;
    }
    done[i] = moved;
  }
  return 0;
}

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
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
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

/*
 * Each area's VmFlags in smaps text (buf, len), its flags line numbered
 * among the distinct ones (a process's areas share a few dozen): per
 * area, two u64 in out, its start address and the number of its line;
 * the distinct lines (the text after "VmFlags:" to the end of the line)
 * as offset and length pairs of u32 in lines, at most max_lines. The scan
 * is memmem over the ~700 bytes between two such lines, which JavaScript
 * did at ~2.5 us an area (10 000 areas: ~25 ms of the main thread,
 * frozen). Returns the areas found (at most max), -1 on a header that is
 * not "HEX-" (the caller's own parser then reports it), or -2 past
 * max_lines distinct lines.
 */
long tsnap_smaps_flags(const uint8_t *buf, size_t len, uint64_t *out, size_t max, uint32_t *lines, uint32_t max_lines, uint32_t *nlines) {
  static const char key[] = "\nVmFlags:";
  size_t pos = 0, n = 0;
  uint32_t distinct = 0;
  while (pos < len && n < max) {
    uint64_t start = 0;
    size_t p = pos;
    for (; p < len && p - pos <= 16; p++) {
      uint8_t c = buf[p];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) break;
      start = start * 16 + (uint64_t)d;
    }
    if (p == pos || p - pos > 16 || p >= len || buf[p] != '-') return -1;
    const uint8_t *at = memmem(buf + pos, len - pos, key, sizeof key - 1);
    if (!at) break;
    size_t from = (size_t)(at - buf) + sizeof key - 1;
    const uint8_t *eol = memchr(buf + from, '\n', len - from);
    size_t end = eol ? (size_t)(eol - buf) : len;
    uint32_t l = (uint32_t)(end - from), id = 0;
    for (id = 0; id < distinct; id++) {
      if (lines[2 * id + 1] == l && memcmp(buf + lines[2 * id], buf + from, l) == 0) break;
    }
    if (id == distinct) {
      if (distinct == max_lines) return -2;
      lines[2 * distinct] = (uint32_t)from;
      lines[2 * distinct + 1] = l;
      distinct++;
    }
    out[2 * n] = start;
    out[2 * n + 1] = id;
    n++;
    pos = end + 1;
  }
  *nlines = distinct;
  return (long)n;
}

/*
 * The VmFlags of every area of an smaps file (fd, at its start), read and
 * parsed here: each area's start address (as a double, rounded as the
 * JavaScript parser rounds) in starts and its flags as bits in masks, a
 * two-letter token's bit being table[(c0 << 8) | c1] - 1 (0: not asked
 * for). buf (buflen bytes, reused by the caller) holds what is read; an
 * area cut by its end moves to its start before the next read. The
 * restore self-check's read (proc/smaps.ts, readVmFlagMasks): one FFI call
 * for the ~30 read()s and the parse, which in JavaScript took ~3-5 ms for
 * 10 000 areas beside the kernel's ~11 ms of producing the text. Returns the areas found; -errno when
 * a read fails; TSNAP_SMAPS_MALFORMED for a header that is not "HEX-" or
 * an area larger than buf (the caller's own parser then says which);
 * TSNAP_SMAPS_FULL past max areas.
 */
#define TSNAP_SMAPS_MALFORMED (-100000L)
#define TSNAP_SMAPS_FULL (-100001L)
long tsnap_smaps_masks(int fd, uint8_t *buf, size_t buflen, const int8_t *table, double *starts, int32_t *masks, size_t max) {
  static const char key[] = "\nVmFlags:";
  size_t len = 0, n = 0;
  int eof = 0;
  while (!eof) {
    if (len == buflen) return TSNAP_SMAPS_MALFORMED;
    ssize_t r = read(fd, buf + len, buflen - len);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) eof = 1;
    len += (size_t)r;
    size_t pos = 0;
    while (pos < len) {
      const uint8_t *at = memmem(buf + pos, len - pos, key, sizeof key - 1);
      const uint8_t *eol = at ? memchr(at + 1, '\n', (size_t)(buf + len - (at + 1))) : NULL;
      if (!eol && !eof) break;
      uint64_t start = 0;
      size_t p = pos;
      for (; p < len && p - pos <= 16; p++) {
        uint8_t c = buf[p];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) break;
        start = start * 16 + (uint64_t)d;
      }
      if (p == pos || p - pos > 16 || p >= len || buf[p] != '-') return TSNAP_SMAPS_MALFORMED;
      if (!at) { pos = len; break; } /* a last header without VmFlags: tolerated, as the parsers do */
      size_t to = eol ? (size_t)(eol - buf) : len;
      int32_t mask = 0;
      for (size_t q = (size_t)(at - buf) + sizeof key - 1; q < to;) {
        if (buf[q] == ' ') { q++; continue; }
        size_t e = q;
        while (e < to && buf[e] != ' ') e++;
        if (e - q == 2) {
          int b = table[(buf[q] << 8) | buf[q + 1]];
          if (b > 0) mask |= (int32_t)(1u << (b - 1));
        }
        q = e;
      }
      if (n == max) return TSNAP_SMAPS_FULL;
      starts[n] = (double)start;
      masks[n] = mask;
      n++;
      pos = to + 1;
    }
    if (pos > len) pos = len;
    memmove(buf, buf + pos, len - pos);
    len -= pos;
  }
  return (long)n;
}

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

static int hexval(uint8_t c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Hex in [p, end) up to `stop`; the index past it, or 0 on no digit, too many, or another byte than `stop` after. */
static size_t hexfield(const uint8_t *b, size_t p, size_t end, uint8_t stop, uint64_t *out) {
  uint64_t v = 0;
  size_t q = p;
  for (; q < end && hexval(b[q]) >= 0; q++) {
    if (q - p == 16) return 0;
    v = v * 16 + (uint64_t)hexval(b[q]);
  }
  if (q == p || q >= end || b[q] != stop) return 0;
  *out = v;
  return q;
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
    if (!hexfield(buf, pos, len, '-', &start)) return -1;
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
      if (!hexfield(buf, pos, len, '-', &start)) return TSNAP_SMAPS_MALFORMED;
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

/*
 * The lines of /proc/PID/maps text (buf, len), "start-end perms offset
 * major:minor inode   path", parsed for proc/maps.ts (readMaps): per line,
 * six doubles in nums (start, end, offset, major, minor, inode: rounded
 * once, as the JavaScript parser rounds) and three int32 in info (bits:
 * 1 r, 2 w, 4 x, 8 shared, 16 " (deleted)" cut off; then where the path
 * starts in buf and its length, 0 when anonymous). In JavaScript the
 * parse of 10 000 lines was ~4 ms and 10 000 substrings. Returns the lines
 * (at most max); TSNAP_MAPS_MALFORMED for a line the caller's own parser
 * must read (it says what is wrong: more than 16 hex digits, a field
 * missing); TSNAP_MAPS_FULL past max lines.
 */
#define TSNAP_MAPS_MALFORMED (-100000L)
#define TSNAP_MAPS_FULL (-100001L)

long tsnap_maps_parse(const uint8_t *buf, size_t len, double *nums, int32_t *info, size_t max) {
  static const char del[] = " (deleted)";
  const size_t dlen = sizeof del - 1;
  size_t pos = 0, n = 0;
  while (pos < len) {
    const uint8_t *nl = memchr(buf + pos, '\n', len - pos);
    size_t eol = nl ? (size_t)(nl - buf) : len;
    if (eol == pos) { pos = eol + 1; continue; }
    if (n == max) return TSNAP_MAPS_FULL;
    uint64_t start, end, off, maj, min, ino = 0;
    size_t p = hexfield(buf, pos, eol, '-', &start);
    if (!p) return TSNAP_MAPS_MALFORMED;
    p = hexfield(buf, p + 1, eol, ' ', &end);
    if (!p || p + 5 >= eol) return TSNAP_MAPS_MALFORMED;
    int32_t bits = (buf[p + 1] == 'r' ? 1 : 0) | (buf[p + 2] == 'w' ? 2 : 0) | (buf[p + 3] == 'x' ? 4 : 0) | (buf[p + 4] == 's' ? 8 : 0);
    p = hexfield(buf, p + 6, eol, ' ', &off);
    if (!p) return TSNAP_MAPS_MALFORMED;
    p = hexfield(buf, p + 1, eol, ':', &maj);
    if (!p) return TSNAP_MAPS_MALFORMED;
    p = hexfield(buf, p + 1, eol, ' ', &min);
    if (!p) return TSNAP_MAPS_MALFORMED;
    size_t q = p + 1;
    for (; q < eol && buf[q] >= '0' && buf[q] <= '9'; q++) {
      if (q - (p + 1) == 19) return TSNAP_MAPS_MALFORMED; /* past 19 digits: the caller rounds it */
      ino = ino * 10 + (uint64_t)(buf[q] - '0');
    }
    if (q == p + 1 || (q < eol && buf[q] != ' ')) return TSNAP_MAPS_MALFORMED;
    while (q < eol && buf[q] == ' ') q++;
    size_t plen = eol - q;
    if (plen >= dlen && memcmp(buf + eol - dlen, del, dlen) == 0) { bits |= 16; plen -= dlen; }
    double *d = nums + 6 * n;
    d[0] = (double)start; d[1] = (double)end; d[2] = (double)off; d[3] = (double)maj; d[4] = (double)min; d[5] = (double)ino;
    int32_t *i = info + 3 * n;
    i[0] = bits; i[1] = (int32_t)q; i[2] = (int32_t)plen;
    n++;
    pos = eol + 1;
  }
  return (long)n;
}

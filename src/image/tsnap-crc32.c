/*
 * CRC-32 (IEEE 802.3, the zlib polynomial, reflected) for tsnap's image
 * files, loaded through the FFI (src/sys/crc32.ts). Same value as zlib's
 * crc32(crc, buf, len). Buffers of 64 bytes and more are folded with
 * carry-less multiplication (PCLMULQDQ, as in Intel's white paper "Fast CRC
 * Computation for Generic Polynomials Using PCLMULQDQ Instruction", 2009):
 * four 128-bit lanes folded 64 bytes at a time, folded into one, then
 * reduced to 32 bits (Barrett). The rest, and CPUs without PCLMULQDQ, use
 * slicing-by-8 tables.
 *
 * Why not @node-rs/crc32 (what tsnap used): the same speed here, but its
 * Rust addon costs ~3.3 MiB of RSS when loaded, a tenth of the tool's whole
 * budget over Node's own (issue 14, requirement 5); this library ~20 KiB.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <immintrin.h>
#include <errno.h>
#include <unistd.h>
#include <stdlib.h>

static uint32_t table[8][256];
static int use_clmul;
static int use_vclmul;

/* At load, before any thread can call in (a copy-on-write worker may). */
__attribute__((constructor)) static void setup(void) {
  __builtin_cpu_init(); /* needed this early, before libgcc set it up */
  use_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  /* libgcc sets avx512f only where the OS saves the 512-bit registers (XCR0). */
  const char *v = getenv("TSNAP_CRC_VCLMUL");
  use_vclmul = use_clmul && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("vpclmulqdq") && !(v && v[0] == '0');
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & -(c & 1u));
    table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++) table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
}

/* `c` is the register, not inverted (the caller inverts in and out). */
static uint32_t by_table(uint32_t c, const uint8_t *p, size_t n) {
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    w ^= c;
    c = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^ table[4][(w >> 24) & 0xff] ^
        table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^ table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ table[0][(c ^ *p++) & 0xff];
  return c;
}

/* x folded forward by the distance `k` stands for, plus the next 16 bytes. */
#define FOLD(x, k, next) \
  _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128((x), (k), 0x00), _mm_clmulepi64_si128((x), (k), 0x11)), (next))

/*
 * The four 128-bit lanes x1..x4 hold the 64 bytes before q, folded; n
 * bytes are left at q. Folds those in and reduces to the 32-bit register.
 */
__attribute__((target("pclmul,sse4.1"))) static uint32_t fold_rest(__m128i x1, __m128i x2, __m128i x3, __m128i x4, const __m128i *q, size_t n) {
  /* x^k mod P for the fold distances (reflected, 33 bits): 4x128+32 / 4x128-32, 128+32 / 128-32, 64. */
  const __m128i fold4 = _mm_set_epi64x(0x1c6e41596, 0x154442bd4);
  const __m128i fold1 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0);
  const __m128i fold64 = _mm_set_epi64x(0, 0x163cd6124);
  /* The polynomial and its Barrett constant floor(x^64 / P), reflected. */
  const __m128i barrett = _mm_set_epi64x(0x1F7011641, 0x1DB710641);
  const __m128i low32 = _mm_set_epi32(0, 0, 0, -1);
  uint32_t c;
  for (; n >= 64; n -= 64, q += 4) {
    x1 = FOLD(x1, fold4, _mm_loadu_si128(q));
    x2 = FOLD(x2, fold4, _mm_loadu_si128(q + 1));
    x3 = FOLD(x3, fold4, _mm_loadu_si128(q + 2));
    x4 = FOLD(x4, fold4, _mm_loadu_si128(q + 3));
  }
  x1 = FOLD(x1, fold1, x2);
  x1 = FOLD(x1, fold1, x3);
  x1 = FOLD(x1, fold1, x4);
  for (; n >= 16; n -= 16, q++) x1 = FOLD(x1, fold1, _mm_loadu_si128(q));
  /* 128 bits to 64, then to 32 plus the 32 Barrett reduces. */
  x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, fold1, 0x10), _mm_srli_si128(x1, 8));
  x1 = _mm_xor_si128(_mm_srli_si128(x1, 4), _mm_clmulepi64_si128(_mm_and_si128(x1, low32), fold64, 0x00));
  x2 = _mm_clmulepi64_si128(_mm_and_si128(x1, low32), barrett, 0x10);
  x2 = _mm_clmulepi64_si128(_mm_and_si128(x2, low32), barrett, 0x00);
  c = (uint32_t)_mm_extract_epi32(_mm_xor_si128(x1, x2), 1);
  return by_table(c, (const uint8_t *)q, n);
}

/* n >= 64. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t by_clmul(uint32_t c, const uint8_t *p, size_t n) {
  const __m128i *q = (const __m128i *)p;
  __m128i x1 = _mm_xor_si128(_mm_loadu_si128(q), _mm_cvtsi32_si128((int)c));
  return fold_rest(x1, _mm_loadu_si128(q + 1), _mm_loadu_si128(q + 2), _mm_loadu_si128(q + 3), q + 4, n - 64);
}

/*
 * n >= 256, on CPUs with VPCLMULQDQ and AVX-512: the same folding, sixteen
 * 128-bit lanes (four 512-bit registers) 256 bytes at a time, then folded
 * into the four lanes by_clmul works on. The one-copy dump takes the CRC
 * of every byte it stores (read back from the page cache); the 128-bit
 * loop took 10% of a 1 GiB dump's CPU (perf, 2026-12-03); over one 1 MiB
 * buffer, repeated, it does 14 GB/s here and this one 54 (AMD EPYC, the
 * figures in docs/performance.md). TSNAP_CRC_VCLMUL=0 keeps the 128-bit
 * loop (bench/floor.ts compares both in one run).
 */
__attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.1"))) static uint32_t by_vclmul(uint32_t c, const uint8_t *p, size_t n) {
  /* x^(2048+32) / x^(2048-32) mod P (the 256-byte distance), and the 512-bit (64-byte) one, per lane. */
  const __m512i fold16 = _mm512_broadcast_i32x4(_mm_set_epi64x(0x1322d1430, 0x11542778a));
  const __m512i fold4 = _mm512_broadcast_i32x4(_mm_set_epi64x(0x1c6e41596, 0x154442bd4));
#define VFOLD(x, k, next) \
  _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128((x), (k), 0x00), _mm512_clmulepi64_epi128((x), (k), 0x11), (next), 0x96)
  __m512i z0 = _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)c)));
  __m512i z1 = _mm512_loadu_si512(p + 64), z2 = _mm512_loadu_si512(p + 128), z3 = _mm512_loadu_si512(p + 192);
  p += 256;
  n -= 256;
  for (; n >= 256; n -= 256, p += 256) {
    z0 = VFOLD(z0, fold16, _mm512_loadu_si512(p));
    z1 = VFOLD(z1, fold16, _mm512_loadu_si512(p + 64));
    z2 = VFOLD(z2, fold16, _mm512_loadu_si512(p + 128));
    z3 = VFOLD(z3, fold16, _mm512_loadu_si512(p + 192));
  }
  z1 = VFOLD(z0, fold4, z1);
  z2 = VFOLD(z1, fold4, z2);
  z3 = VFOLD(z2, fold4, z3);
#undef VFOLD
  return fold_rest(_mm512_extracti32x4_epi32(z3, 0), _mm512_extracti32x4_epi32(z3, 1), _mm512_extracti32x4_epi32(z3, 2),
                   _mm512_extracti32x4_epi32(z3, 3), (const __m128i *)p, n);
}

/* zlib's crc32(crc, p, n), except that n == 0 returns crc whatever p is. */
uint32_t tsnap_crc32(uint32_t crc, const uint8_t *p, size_t n) {
  uint32_t c = ~crc;
  c = n >= 256 && use_vclmul ? by_vclmul(c, p, n) : n >= 64 && use_clmul ? by_clmul(c, p, n) : by_table(c, p, n);
  return ~c;
}

/*
 * The one-copy dump's read-back (src/dump/splice-crc-pool.ts): the CRC of
 * each of `n` ranges of the file `fd` (ranges[2i] the offset, ranges[2i+1]
 * the length) into crcs[i], read in pieces of `len` bytes of `buf` that
 * stay in the CPU's cache until their CRC is taken. Run on a thread of
 * libuv's pool while the main thread splices the next chunks: no V8
 * isolate, and no step that waits for the main thread. 0, or -errno of the
 * failed read (-EIO for a short one: the range was just stored).
 */
int tsnap_crc32_ranges(int fd, const uint64_t *ranges, uint32_t n, uint32_t *crcs, uint8_t *buf, size_t len) {
  for (uint32_t i = 0; i < n; i++) {
    uint64_t off = ranges[2 * i], left = ranges[2 * i + 1];
    uint32_t c = 0;
    while (left > 0) {
      size_t want = left < len ? (size_t)left : len;
      ssize_t got = pread(fd, buf, want, (off_t)off);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) return -errno;
      if (got == 0) return -EIO;
      c = tsnap_crc32(c, buf, (size_t)got);
      off += (uint64_t)got;
      left -= (uint64_t)got;
    }
    crcs[i] = c;
  }
  return 0;
}

/*
 * A restore's chunk read (src/image/page-file.ts): `len` bytes of `fd` at
 * `off` into `buf`, and their CRC into *crc. Run on a thread of libuv's
 * pool: the CRC of each piece is taken right after its read, while the
 * piece is still in that CPU's cache, instead of on tsnap's main thread
 * later (from another core's cache), where it competed with the writes
 * into the new process. The bytes checked are the bytes left in `buf`.
 * Returns the bytes read (fewer than `len` only at the end of the file),
 * or -errno of the failed read.
 */
#define READ_PIECE (256u << 10)
int64_t tsnap_pread_crc32(int fd, uint8_t *buf, size_t len, uint64_t off, uint32_t *crc) {
  size_t done = 0;
  uint32_t c = 0;
  while (done < len) {
    size_t want = len - done < READ_PIECE ? len - done : READ_PIECE;
    ssize_t got = pread(fd, buf + done, want, (off_t)(off + done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return -(int64_t)errno;
    if (got == 0) break;
    c = tsnap_crc32(c, buf + done, (size_t)got);
    done += (size_t)got;
  }
  *crc = c;
  return (int64_t)done;
}

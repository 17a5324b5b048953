/**
 * The target of bench/lazy.ts and bench/lazy-steps.ts: SIZE MiB of private
 * memory, half pseudo-random and half small integers per page; each line on
 * stdin makes it read one word in each of 64 pages spread over it and
 * answer (a lazily restored process faults them in); EOF ends it.
 */
export const LAZY_FIXTURE = `
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
  size_t n = (size_t)atol(argv[1]) << 20;
  uint64_t *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (size_t i = 0; i < n / 8; i++) p[i] = (i % 512 < 256) ? i * 0x9E3779B97F4A7C15ull : (i & 0xff);
  printf("READY\\n"); fflush(stdout);
  char c;
  while (read(0, &c, 1) == 1) {
    uint64_t s = 0;
    for (size_t k = 0; k < 64; k++) s += p[(n / 8 / 64) * k];
    dprintf(1, "%llu\\n", (unsigned long long)(s & 1));
  }
  return 0;
}`;

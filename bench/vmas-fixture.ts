/**
 * The process of bench/vmas.ts and bench/restore-ab.ts: argv[1] one-page
 * VMAs, protections alternating so none merge, every other page written;
 * prints "ready" once set up.
 */
export const VMAS_FIXTURE = `
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include <fcntl.h>
int main(int argc, char **argv) {
  long n = atol(argv[1]);
  for (int fd = 3; fd < 1024; fd++) close(fd);
  char *p = mmap(0, n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 1;
  for (long i = 0; i < n; i += 2) p[i * 4096] = (char)i;
  for (long i = 1; i < n; i += 2) mprotect(p + i * 4096, 4096, PROT_READ);
  printf("ready\\n");
  fflush(stdout);
  // criu refuses a pipe to the outside: stdio becomes /dev/null.
  int null = open("/dev/null", O_RDWR);
  dup2(null, 0); dup2(null, 1); dup2(null, 2); close(null);
  for (;;) pause();
}
`;

/*
 * This CPU's XSAVE layout, for checking a thread's saved XSAVE area
 * against it (src/sys/cpu.ts): XCR0 (the features the kernel enabled)
 * and the standard-format size those features take, CPUID leaf 0xD
 * sub-leaf 0 EBX, which is the length PTRACE_GETREGSET(NT_X86_XSTATE)
 * gives here.
 */
#include <cpuid.h>
#include <stdint.h>

int tsnap_xsave_layout(uint64_t *xcr0, uint32_t *size) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return -1; /* no OSXSAVE: no XGETBV */
  if (__get_cpuid_max(0, 0) < 0xd) return -1;
  __cpuid_count(0xd, 0, a, b, c, d);
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  *xcr0 = ((uint64_t)hi << 32) | lo;
  *size = b;
  return 0;
}

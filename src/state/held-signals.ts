/**
 * The signal mask a task gets while tsnap drives it with remote code: every
 * signal that can wait is blocked, so one that arrives stays queued in the
 * kernel with its siginfo and its place, instead of stopping the tracee in
 * a signal-delivery stop where it could only be swallowed and sent again
 * with kill() (which keeps neither the value of a queued signal nor its
 * order). SIGTRAP and the fault signals stay open: the kernel resets the
 * action of a forced signal that is blocked, and the int3 that ends remote
 * code is one. The guardian (tsnap-guardian.c) holds dumped tasks the same way.
 */
const bit = (sig: number): bigint => 1n << BigInt(sig - 1);
const FORCED = bit(5) | bit(11) | bit(7) | bit(4) | bit(8) | bit(31); // SIGTRAP SIGSEGV SIGBUS SIGILL SIGFPE SIGSYS

export const MASK_WHILE_HELD = ((1n << 64n) - 1n) & ~FORCED;

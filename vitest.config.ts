import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Every process a test starts is marked, killed after its test, and
    // none may be alive at the end of the run (test/helpers/processes.ts).
    globalSetup: ['test/global-setup.ts'],
    setupFiles: ['test/helpers/setup-file.ts'],
    // Forks, not threads: ptrace requests must come from the main thread of
    // the process that attached.
    pool: 'forks',
    // Two files at a time: most of a test's time is spent waiting (for a pid
    // to be reaped, a process to answer, a round to pass), not computing, and
    // the tests judge only what is theirs (their own pids, ports, lock rules,
    // orphaned helpers), so they do not see each other.
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});

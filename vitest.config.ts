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
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});

/**
 * A test hook, inert in production: with TSNAP_TEST_PAUSE_AT=NAME in its
 * environment, tsnap stops itself (SIGSTOP) when it reaches the point
 * called NAME, so that a test can signal or SIGKILL it exactly there
 * (the safety of tsnap at every instant is otherwise untestable without
 * timing luck). Each name is used at one place only.
 */
export function pausePoint(name: string): void {
  if (process.env.TSNAP_TEST_PAUSE_AT === name) process.kill(process.pid, 'SIGSTOP');
}

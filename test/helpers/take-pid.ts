/**
 * Giving a pid that has just been freed to another process: what a busy
 * host does to a dead process's pid sooner or later (pid_max is 32768
 * here), made to happen now, for tests of what tsnap does to "the same
 * pid" in a later round.
 */
import { spawn } from 'node:child_process';
import { expect } from 'vitest';
import { registerPid } from './processes.js';

/**
 * Starts `sleep 300` as exactly `pid` through ns_last_pid, in its own
 * session with /dev/null as stdio; other work on the host may take the pid
 * first, so it is tried again (up to 5000 forks). Registered for the
 * cleanup; the caller kills it by pid.
 */
export async function takePid(pid: number): Promise<number> {
  const script = `
import os, sys
want = int(sys.argv[1])
for i in range(5000):
    with open('/proc/sys/kernel/ns_last_pid', 'w') as f: f.write(str(want - 1))
    pid = os.fork()
    if pid == 0:
        if os.getpid() == want:
            os.setsid()
            fd = os.open('/dev/null', os.O_RDWR)
            for k in (0, 1, 2): os.dup2(fd, k)
            os.closerange(3, 65536)
            os.execvp('sleep', ['sleep', '300'])
        os._exit(0)
    if pid == want:
        print('TOOK', pid, flush=True); sys.exit(0)
    os.waitpid(pid, 0)
print('FAILED', flush=True)
`;
  const py = spawn('python3', ['-c', script, String(pid)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  py.stdout!.on('data', (d) => { out += d; });
  await new Promise((res) => py.on('close', res));
  expect(out.trim(), `taking pid ${pid}`).toBe(`TOOK ${pid}`);
  registerPid(pid);
  return pid;
}

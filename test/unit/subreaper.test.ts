// setChildSubreaper (src/sys/fd.ts), which bench/criu.ts's adoptRestorees()
// relies on to reap criu -d's and `tsnap restore --detach`'s tasks itself:
// an orphan below a subreaper is its child to wait for, its pid free at once.
// In a child Node process: a subreaper vitest worker would collect the
// orphans of every later test in the file's worker. And pidHolder's naming.
import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { pidHolder } from '../../bench/criu.js';

const sysDist = fileURLToPath(new URL('../../dist/src/sys/index.js', import.meta.url));

const SCRIPT = `
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
const sys = await import(process.argv[1]);
sys.setChildSubreaper();
const out = spawnSync('sh', ['-c', 'sleep 30 </dev/null >/dev/null 2>&1 & echo $!'], { encoding: 'utf8' });
const orphan = Number(out.stdout.trim());
let ppid = -1, reaped = -1;
try {
  ppid = Number(/^PPid:\\s*(\\d+)/m.exec(readFileSync('/proc/' + orphan + '/status', 'utf8'))[1]);
} finally {
  sys.kill(orphan, 9);
  reaped = sys.ptrace.waitpidBlocking(orphan).pid;
}
console.log(JSON.stringify({ self: process.pid, orphan, ppid, reaped, gone: !existsSync('/proc/' + orphan) }));
`;

describe('setChildSubreaper', () => {
  it('makes an orphan of a child this process\'s to reap: waitpid frees its pid at once', () => {
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', SCRIPT, sysDist], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status, r.stderr).toBe(0);
    const got = JSON.parse(r.stdout.trim()) as { self: number; orphan: number; ppid: number; reaped: number; gone: boolean };
    expect(got.ppid).toBe(got.self);
    expect(got.reaped).toBe(got.orphan);
    expect(got.gone).toBe(true);
  });
});

describe('pidHolder', () => {
  it('names a process, a thread of one, and nothing for a free pid', () => {
    expect(pidHolder(process.pid)).toMatch(/\(process, ppid \d+, /);
    const thread = readdirSync('/proc/self/task').map(Number).find((t) => t !== process.pid);
    if (thread !== undefined) expect(pidHolder(thread)).toContain(`thread of ${process.pid}`);
    expect(pidHolder(4_194_304 + 1)).toBeNull(); // past any pid_max
  });
});

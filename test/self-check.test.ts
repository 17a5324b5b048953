/**
 * Restore checks its own work (src/restore/self-check.ts): the rebuilt
 * process, as /proc shows it, against its image. Compared here with real
 * processes: a live process against its own fresh image (no difference may
 * be reported: no false alarms), the same image altered in each field the
 * check covers (each must be named), and the CLI's --check modes.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { compileC, startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, readImage, restoreDetached, killPid } from './helpers/tsnap.js';
import { startServe } from './helpers/serve.js';
import { registerPid, waitPidsFree } from './helpers/processes.js';
import { checkRestored } from '../src/restore/self-check.js';
import { ExitCode } from '../src/errors.js';
import type { ProcessImage } from '../formats/schema.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

/** A child in its parent's process group: restored alone, it cannot be in that group again. */
const GROUP_MEMBER = `import os, time
os.setpgid(0, 0)
pid = os.fork()
if pid == 0:
    print('READY pid=%d' % os.getpid(), flush=True)
    while True: time.sleep(0.1)
os.waitpid(pid, 0)
time.sleep(1000)`;

const threadsOf = (p: ProcessImage) => p.threads.map((t) => ({ tid: t.tid, sigmask: t.sigmask }));

describe('restore self-check', () => {
  it('finds nothing between a live process and its own image, and names every field altered in the image', async () => {
    const bin = await compileC('advised');
    const p = await startProcess(bin, []);
    const work = tmpDir('selfcheck');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    const img = readImage(join(work, 'img')).process!;
    expect(checkRestored(img, p.pid, { newPid: false, threads: threadsOf(img) })).toEqual([]);

    const altered = (f: (q: ProcessImage) => void) => {
      const q = structuredClone(img);
      f(q);
      return checkRestored(q, p.pid, { newPid: false, threads: threadsOf(q) });
    };
    expect(altered((q) => { q.umask = 0o077; })).toEqual([expect.stringMatching(/^umask is 0\d+, the image's 077$/)]);
    expect(altered((q) => { q.mm.vmas.splice(3, 1); }).join('\n')).toMatch(/^memory: the process maps .* the image does not$/m);
    expect(altered((q) => { q.mm.vmas[3].prot ^= 2; }).join('\n')).toMatch(/^memory: the image maps /m);
    const flagged = img.mm.vmas.findIndex((v) => v.flags?.includes('dd'));
    expect(altered((q) => { q.mm.vmas[flagged].flags = []; })).toEqual([expect.stringMatching(/^memory: VmFlags of [0-9a-f]+ are \[.*dd.*\], the image's \[\]$/)]);
    expect(altered((q) => { q.fds.push({ ...q.fds[2], fd: 77 }); })).toEqual(['fd 77 (' + img.fds[2].link + ') is not open']);
    expect(altered((q) => { q.fds.pop(); })).toEqual([`fd ${img.fds.at(-1)!.fd} is open but not in the image`]);
    expect(altered((q) => { q.threads[0].sigmask = 0x400n; })).toEqual([expect.stringMatching(/blocked signals 0x0, the image's 0x400$/)]);
    expect(altered((q) => { q.cwd = '/nonexistent'; })).toEqual([expect.stringMatching(/^cwd is .*, the image's \/nonexistent$/)]);
    expect(altered((q) => { q.rlimits[7].cur = 17n; })).toEqual([expect.stringMatching(/^rlimit Max open files: \d+\/\d+, the image's 17\/\d+$/)]);
    expect(altered((q) => { q.creds.uid = [1, 1, 1, 1]; })).toEqual([expect.stringMatching(/^uids .* is 0 0 0 0, the image's 1 1 1 1$/)]);
    const usr2 = (q: ProcessImage, handler: bigint) => {
      const a = q.signals.actions.find((x) => x.signo === 12);
      if (a) a.handler = handler;
      else q.signals.actions.push({ signo: 12, handler, flags: 0n, restorer: 0n, mask: 0n });
    };
    expect(altered((q) => usr2(q, 1n))).toEqual([expect.stringMatching(/^ignored signals 0x[0-9a-f]+, the image's 0x[0-9a-f]*8[0-9a-f]{2}$/)]);
    expect(altered((q) => usr2(q, 0x401000n))).toEqual([expect.stringMatching(/^caught signals 0x[0-9a-f]+, the image's 0x[0-9a-f]*8[0-9a-f]{2}$/)]);
  });

  it('names an fd whose open flags or position differ', async () => {
    const work = tmpDir('selfcheck-fd');
    const p = await startPython(`import os, time
f = open(${JSON.stringify(join(work, 'data'))}, 'w'); f.write('abc'); f.flush()
print('READY fd=%d' % f.fileno(), flush=True)
while True: time.sleep(0.1)`);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    const img = readImage(join(work, 'img')).process!;
    const fd = Number(p.readyInfo.fd);
    expect(checkRestored(img, p.pid, { newPid: false, threads: threadsOf(img) })).toEqual([]);
    const q = structuredClone(img);
    const f = q.fds.find((x) => x.fd === fd)!;
    f.flags |= 0o4000; // O_NONBLOCK
    f.pos = 1;
    expect(checkRestored(q, p.pid, { newPid: false, threads: threadsOf(q) })).toEqual([
      expect.stringMatching(new RegExp(`^fd ${fd} \\(.*data\\): open flags 0\\d+, the image's 0\\d+$`)),
      expect.stringMatching(new RegExp(`^fd ${fd} \\(.*data\\): position 3, the image's 1$`)),
    ]);
  });

  it('--check strict refuses to start a process that differs from its image; warn names it; off is silent', async () => {
    // Not a group leader: its group's leader is not in the image, so the
    // restored process cannot be in that group again.
    const script = GROUP_MEMBER;
    const work = tmpDir('selfcheck-cli');
    for (const mode of ['strict', 'warn', 'off'] as const) {
      const p = await startPython(script);
      const child = Number(p.readyInfo.pid);
      const dir = join(work, mode);
      expect((await tsnap('dump', '--pid', String(child), '--dir', dir)).code).toBe(0);
      await waitPidsFree([child]);
      const r = await restoreDetached(dir, join(work, `${mode}.pid`), ['--check', mode]);
      if (mode === 'strict') {
        expect(r.result.code).toBe(ExitCode.restoreFailed);
        expect(r.result.stderr).toMatch(/differs from its image .*process group is \d+, the image's \d+/);
        expect(existsSync(`/proc/${child}`)).toBe(false);
      } else {
        expect(r.result.code, r.result.stderr).toBe(0);
        if (mode === 'warn') expect(r.result.stderr).toMatch(/restore check of \d+: process group is \d+, the image's \d+ \(its leader is not in the image/);
        else expect(r.result.stderr).not.toMatch(/restore check/);
      }
    }
  });

  it('tsnap serve --restore tells what its restore check finds, as warning events', async () => {
    const p = await startPython(GROUP_MEMBER);
    const child = Number(p.readyInfo.pid);
    const work = tmpDir('selfcheck-serve');
    const srv = await startServe(join(work, 'in'), ['--restore', '--count', '1']);
    const m = await tsnap('migrate', '--pid', String(child), '--to', `127.0.0.1:${srv.port}`, '--token', 'sesame', '--max-iterations', '1');
    expect(m.code, m.stderr).toBe(0);
    for (let i = 0; i < 1500 && !srv.events.some((e) => e.includes('"restored"')); i++) await new Promise((res) => setTimeout(res, 20));
    expect(srv.events.some((e) => e.includes('"restored"')), srv.events.join('\n')).toBe(true);
    registerPid(child);
    const warnings = srv.events.filter((e) => e.includes('"warning"') && e.includes('restore check')).map((e) => JSON.parse(e) as { pid: number; message: string });
    expect(warnings.length, srv.events.join('\n')).toBe(1);
    expect(warnings[0].pid).toBe(child);
    expect(warnings[0].message).toMatch(/restore check of \d+: process group is \d+, the image's \d+ \(its leader is not in the image/);
    await killPid(child);
  });
});

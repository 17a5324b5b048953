/**
 * Terminals: a terminal emulator and the shell running in its pty (a tree:
 * master in the parent, the child's controlling terminal on its 0-2 and
 * /dev/tty), bytes queued both ways at the dump, a locked pty, a hung-up
 * slave; a session leader whose controlling terminal is a pty it holds
 * only the master of; and the refusal of a slave whose master is elsewhere.
 * The restored programs talk through their ptys and report what they see.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { statSync } from 'node:fs';
import { compileC, startProcess, startPython, useProcessCleanup, tmpDir, cleanupTmpDirs, type Running } from './helpers/fixtures.js';
import { tsnap, restoreDetached, readImage, killPid, dumpKillRestore, TSNAP_BIN, type Restored } from './helpers/tsnap.js';
import { writeFileSync, readlinkSync } from 'node:fs';
import { registerPid, waitPidsFree } from './helpers/processes.js';
import { readStat, readStatus } from '../src/proc/index.js';
import { ExitCode } from '../src/errors.js';
import { checkRestored } from '../src/restore/self-check.js';
import { imagePtys } from '../src/files/tty.js';
import type { ProcessImage } from '../formats/schema.js';

useProcessCleanup();
afterAll(() => cleanupTmpDirs());

/**
 * A terminal: runs argv in a new pty (session leader, controlling
 * terminal), prints its child's pid and relays the pty both ways, each
 * line the pty gives as "T:<line>".
 */
const TERM_PY = `
import os, pty, sys, select
os.closerange(3, 256)
pid, m = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
print('TERM pid=%d' % pid, flush=True)
buf = b''
while True:
    r, _, _ = select.select([m, 0], [], [])
    if 0 in r:
        line = os.read(0, 1024)
        if not line: break
        os.write(m, line)
    if m in r:
        try: d = os.read(m, 1024)
        except OSError: break
        if not d: break
        buf += d
        while b'\\n' in buf:
            l, buf = buf.split(b'\\n', 1)
            print('T:' + l.decode(errors='replace').rstrip('\\r'), flush=True)
`;

/** The terminal on a restored process's stdin. */
function readlinkTty(pid: number): string {
  return readlinkSync(`/proc/${pid}/fd/0`);
}

const EMU_LINES = ['M:queued-out', 'M:queued-in', 'M:echo:queued-in'];

/** "go", then what the parent read from the master and its ROOT line. */
async function talk(p: Pick<Running, 'writeLine'> & { waitForLine(re: RegExp, ms?: number, from?: number): Promise<string> }, lines: () => string[]): Promise<{ master: string[]; root: string }> {
  const from = lines().length;
  p.writeLine('go');
  const root = await p.waitForLine(/^ROOT /, 10000, from);
  return { master: lines().slice(from).filter((l) => l.startsWith('M')), root };
}

function expectEmulator(got: { master: string[]; root: string }, name: string, child: number): void {
  // Queued bytes come back once each, in order: no lost output, no second echo.
  expect(got.master.slice(0, 3)).toEqual(EMU_LINES);
  expect(got.master.slice(3)).toEqual([`M:tty=${name} sid=1 fg=1 ws=33x101 excl=1`, 'M:devtty', 'M:done']);
  expect(got.root).toBe(`ROOT name=${name} sid=${child} locked=1 pkt=1 hup_read=0 hup_write=5`);
}

describe('ttys', () => {
  it('a terminal emulator and its shell: same pts, controlling terminal, window size, queued bytes, a locked and a hung-up pty', async () => {
    const work = tmpDir('tsnap-tty-');
    const p = await startProcess(await compileC('ptys'), []);
    const child = Number(p.readyInfo.child);
    const name = p.readyInfo.name;
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree');
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    await waitPidsFree([child]); // init reaps the killed process late
    const masters = readImage(join(dir, String(p.pid))).process!.fds.filter((f) => f.tty?.type === 'master');
    const a = masters.find((f) => f.fd === 10)!.tty!;
    expect(`/dev/pts/${a.index}`).toBe(name);
    expect(a.pty!.input.toString()).toBe('queued-in\n');
    expect(a.pty!.output.toString()).toBe('queued-out\r\nqueued-in\r\n');
    expect(masters.find((f) => f.fd === 11)!.tty!.pty!.locked).toBe(true);

    const r: Restored = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(r.result.stderr).not.toMatch(/restore check/);
    const st = readStat(child);
    expect(st.session).toBe(child);
    expect(st.ttyNr).toBe(statSync(name).rdev);
    expect(st.tpgid).toBe(child);
    expectEmulator(await talk(r, () => r.lines), name, child);
    await killPid(child);
  });

  it('leave-running: the dump puts the queued bytes back, the original sees each once', async () => {
    const work = tmpDir('tsnap-tty-');
    const p = await startProcess(await compileC('ptys'), []);
    const child = Number(p.readyInfo.child);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--tree', '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    expect(readStatus(p.pid).tracerPid).toBe(0);
    expectEmulator(await talk(p, p.lines), p.readyInfo.name, child);
    await killPid(child);
  });

  it('self-check: a live tree against its own image finds nothing; each pty field altered is named', async () => {
    const work = tmpDir('tsnap-tty-');
    const p = await startProcess(await compileC('ptys'), []);
    const child = Number(p.readyInfo.child);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir, '--tree', '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    const root = readImage(join(dir, String(p.pid))).process!;
    const kid = readImage(join(dir, String(child))).process!;
    const ptys = imagePtys([root, kid]);
    const check = (q: ProcessImage) => checkRestored(q, q.pid, { newPid: false, threads: q.threads.map((t) => ({ tid: t.tid, sigmask: t.sigmask })), ptys });
    expect(check(root)).toEqual([]);
    expect(check(kid)).toEqual([]);
    const altered = (img: ProcessImage, f: (q: ProcessImage) => void) => { const q = structuredClone(img); f(q); return check(q); };
    const a = (q: ProcessImage) => q.fds.find((x) => x.fd === 10)!.tty!.pty!;
    expect(altered(root, (q) => { const w = Buffer.from(a(q).winsize); w.writeUInt16LE(34, 0); a(q).winsize = w; })).toEqual(['fd 10 (master of ' + p.readyInfo.name + '): window size 33x101, the image\'s 34x101']);
    expect(altered(root, (q) => { a(q).termios[12] ^= 0o10; })).toEqual([expect.stringMatching(/^fd 10 \(master of .*\): termios [0-9a-f]+, the image's [0-9a-f]+$/)]);
    expect(altered(root, (q) => { q.fds.find((x) => x.fd === 11)!.tty!.pty!.locked = false; })).toEqual([expect.stringMatching(/^fd 11 .*: locked, the image's unlocked$/)]);
    expect(altered(root, (q) => { q.fds.find((x) => x.fd === 11)!.tty!.pty!.packet = false; })).toEqual([expect.stringMatching(/^fd 11 .*: packet mode on, the image's off$/)]);
    expect(altered(root, (q) => { q.fds.find((x) => x.fd === 10)!.tty!.index += 1; })).toEqual([expect.stringMatching(/^fd 10 is the master of \/dev\/pts\/\d+, the image's \/dev\/pts\/\d+$/)]);
    expect(altered(kid, (q) => { q.fds.find((x) => x.fd === 0)!.tty!.exclusive = false; })).toEqual(['fd 0 (' + p.readyInfo.name + '): exclusive mode on, the image\'s off']);
    expect(altered(kid, (q) => { q.ctty!.fgPgid = p.pid; })).toEqual([`foreground group of ${p.readyInfo.name} is ${child}, the image's ${p.pid}`]);
    expect(altered(kid, (q) => { delete q.ctty; })).toEqual([expect.stringMatching(/^controlling terminal is device \d+, the image has none$/)]);
    await killPid(child);
  });

  it('a session leader whose controlling terminal is a pty it holds only the master of, with /dev/tty open', async () => {
    const work = tmpDir('tsnap-tty-');
    const script = `
import os, pty, fcntl, termios, sys
os.closerange(3, 256)
os.setsid()
m, s = pty.openpty()
fcntl.ioctl(s, termios.TIOCSCTTY, 0)
a = termios.tcgetattr(s); a[3] &= ~termios.ECHO; termios.tcsetattr(s, termios.TCSANOW, a)
name = os.ttyname(s)
os.close(s)
os.write(m, b'hello\\n')
t = os.open('/dev/tty', os.O_RDWR)
print('READY name=%s' % name, flush=True)
for line in sys.stdin:
    if line.strip() == 'check':
        got = os.read(t, 100)
        os.write(m, b'again\\n')
        got2 = os.read(t, 100)
        st = open('/proc/self/stat').read().rsplit(')', 1)[1].split()
        echo = termios.tcgetattr(t)[3] & termios.ECHO
        print('CHECK got=%s got2=%s ttynr=%s echo=%d' % (got.decode().strip(), got2.decode().strip(), st[4], echo != 0), flush=True)
`;
    const p = await startPython(script);
    const name = p.readyInfo.name;
    const r = await dumpKillRestore(p, work);
    expect(r.result.stderr).not.toMatch(/restore check/);
    expect(readStat(r.pid).session).toBe(r.pid);
    r.writeLine('check');
    const line = await r.waitForLine(/^CHECK/);
    expect(line).toBe(`CHECK got=hello got2=again ttynr=${statSync(name).rdev} echo=0`);
  });

  it('refuses a pty slave above fd 2 whose master is outside the dump, and leaves the process running', async () => {
    const script = `
import os, pty, time
os.closerange(3, 256)
m, s = pty.openpty()
pid = os.fork()
if pid == 0:
    os.close(m)
    time.sleep(60)
    os._exit(0)
print('READY child=%d slave=%d name=%s' % (pid, s, os.ttyname(s)), flush=True)
time.sleep(60)
`;
    const p = await startPython(script);
    const child = Number(p.readyInfo.child);
    const work = tmpDir('tsnap-tty-');
    const d = await tsnap('dump', '--pid', String(child), '--dir', join(work, 'img'));
    expect(d.code).toBe(ExitCode.unsupported);
    expect(d.stderr).toBe(`tsnap: fd ${p.readyInfo.slave} is ${p.readyInfo.name}, a terminal whose master is outside the dump; tsnap restores ptys whose master is dumped too, /dev/tty, and other terminals on stdin/stdout/stderr (or above 2, the terminal of one of them) only\n`);
    const s = readStatus(child);
    expect(s.tracerPid).toBe(0);
    expect(readStat(child).state).toBe('S');
    await killPid(child);
  });

  it('refuses the master of a session\'s controlling terminal when the session leader is not dumped', async () => {
    const p = await startProcess(await compileC('ptys'), []);
    const child = Number(p.readyInfo.child);
    const work = tmpDir('tsnap-tty-');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code).toBe(ExitCode.unsupported);
    expect(d.stderr).toBe(`tsnap: fd 10 is the master of ${p.readyInfo.name}, the controlling terminal of session ${child}, whose leader is not in the dump; dump the session with --tree from its leader\n`);
    expect(readStatus(p.pid).tracerPid).toBe(0);
    // Untouched: the queued bytes are still there, once.
    expectEmulator(await talk(p, p.lines), p.readyInfo.name, child);
    await killPid(child);
  });

  it('a shell job: restored from another terminal, the program has that terminal as its controlling terminal, in the foreground', async () => {
    const work = tmpDir('tsnap-tty-');
    const term = join(work, 'term.py');
    writeFileSync(term, TERM_PY);
    // The program: a job of the shell-like session leader, in its own foreground group.
    const job = `
import os, sys
import time
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    while os.tcgetpgrp(0) != os.getpid(): time.sleep(0.01)
    d = os.dup(0)
    o = os.open(os.ttyname(0), os.O_RDWR)
    print('READY w=%d tty=%s' % (os.getpid(), os.ttyname(0)), flush=True)
    for line in sys.stdin:
        if line.strip() == 'check':
            st = open('/proc/self/stat').read().rsplit(')', 1)[1].split()
            print('CHECK tty=%s fg=%d ttynr=%s dup=%s reopen=%s' % (os.ttyname(0), os.tcgetpgrp(0) == os.getpgrp(), st[4], os.ttyname(d), os.ttyname(o)), flush=True)
    os._exit(0)
os.setpgid(pid, pid)
os.tcsetpgrp(0, pid)
os.waitpid(pid, 0)
`;
    const t1 = await startProcess('python3', [term, 'python3', '-c', job], { readyPattern: /^T:READY/ });
    const ready = /w=(\d+) tty=(\S+)/.exec(t1.readyLine)!;
    const w = Number(ready[1]);
    registerPid(w);
    const rdev1 = statSync(ready[2]).rdev;
    const d = await tsnap('dump', '--pid', String(w), '--dir', join(work, 'img'));
    expect(d.code, d.stderr).toBe(0);
    const img = readImage(join(work, 'img')).process!;
    expect(img.ctty?.rdev).toBe(rdev1);
    // 0-2: stdio; the dup of fd 0 and another open of the same terminal: restore's stdio again.
    expect(img.fds.filter((f) => f.tty).map((f) => f.tty)).toEqual([{ type: 'stdio', index: 0, dup: true }, { type: 'stdio', index: 0 }]);
    await t1.exited;
    await waitPidsFree([w]); // init reaps the killed process late
    // tsnap restore runs in a second terminal, in the foreground, not detached.
    const t2 = await startProcess('python3', [term, process.execPath, TSNAP_BIN, 'restore', '--dir', join(work, 'img')], { readyPattern: /^T:[^]*restored process/ });
    registerPid(w);
    const tty2 = readlinkTty(w);
    t2.writeLine('check');
    const line = await t2.waitForLine(/^T:CHECK/, 10000);
    expect(line).toBe(`T:CHECK tty=${tty2} fg=1 ttynr=${statSync(tty2).rdev} dup=${tty2} reopen=${tty2}`);
    expect(t2.lines().filter((l) => /controlling terminal/.test(l))).toEqual([]);
    await killPid(w);
  });

  it('a login shell (bash) in a terminal, restored in a terminal that runs tsnap restore: it leads its session and has that terminal', async () => {
    const work = tmpDir('tsnap-tty-');
    const term = join(work, 'term.py');
    writeFileSync(term, TERM_PY);
    const t1 = await startProcess('python3', [term, 'env', '-i', 'PS1=', 'TERM=dumb', 'bash', '--norc', '--noprofile', '-i'], { readyPattern: /^TERM pid=/ });
    const bash = Number(/pid=(\d+)/.exec(t1.readyLine)![1]);
    registerPid(bash);
    t1.writeLine('echo UP $$');
    await t1.waitForLine(new RegExp(`^T:UP ${bash}$`), 10000);
    const d = await tsnap('dump', '--pid', String(bash), '--dir', join(work, 'img'));
    expect(d.code, d.stderr).toBe(0);
    // fd 255: bash's own dup of its terminal.
    expect(readImage(join(work, 'img')).process!.fds.find((f) => f.fd === 255)?.tty).toEqual({ type: 'stdio', index: 0, dup: true });
    await t1.exited;
    await waitPidsFree([bash]); // init reaps the killed process late
    const t2 = await startProcess('python3', [term, process.execPath, TSNAP_BIN, 'restore', '--dir', join(work, 'img')], { readyPattern: /^T:[^]*restored process/ });
    registerPid(bash);
    expect(t2.lines().filter((l) => /warning/.test(l))).toEqual([]);
    t2.writeLine('echo AGAIN $$ $(cat /proc/$$/stat | cut -d" " -f6,7) $(readlink /proc/$$/fd/0)');
    const line = await t2.waitForLine(/^T:AGAIN /, 10000);
    const tty2 = readlinkTty(bash);
    expect(line).toBe(`T:AGAIN ${bash} ${bash} ${statSync(tty2).rdev} ${tty2}`);
    await killPid(bash);
  });
});

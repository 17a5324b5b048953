/**
 * Files and credentials in flight in unix socket pairs (SCM_RIGHTS,
 * SCM_CREDENTIALS): dumped with the queue, restored, and received and used
 * by the restored process itself. A file in flight that restore could not
 * bring back is refused before anything is lost, and the process keeps its
 * queue.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, useRestoredCleanup, readImage, dumpKillRestore } from './helpers/tsnap.js';
import { ExitCode } from '../src/errors.js';

useProcessCleanup();
useRestoredCleanup();
afterAll(() => cleanupTmpDirs());

const RECORDS = [
  'MSG pre nfds=0 creds=self',
  'MSG m1 nfds=2 creds=self', 'PIPE via-pipe', 'FILE file-content',
  'MSG plain nfds=0 creds=self',
  'MSG ev nfds=1 creds=self', 'EVENTFD 12',
  'END',
];
// A stream read glues the writes before the one that carried files, and stops after it.
const STREAM = [
  'MSG prem1 nfds=2 creds=self', 'PIPE via-pipe', 'FILE file-content',
  'MSG plainev nfds=1 creds=self', 'EVENTFD 12',
  'END',
];

async function received(r: { lines: string[]; writeLine(s: string): void; waitForLine(re: RegExp, t?: number, from?: number): Promise<string> }): Promise<string[]> {
  const from = r.lines.length;
  r.writeLine('check');
  await r.waitForLine(/^END/, 5000, from);
  return r.lines.slice(from).filter((l) => !l.startsWith('READY'));
}

describe('files in flight in unix sockets', () => {
  for (const [type, want] of [['dgram', RECORDS], ['seqpacket', RECORDS], ['stream', STREAM]] as const) {
    it(`${type}: a pipe end nobody else holds, a closed file and a shared eventfd in flight come back, with the senders' credentials`, async () => {
      const work = tmpDir('tsnap-scm-');
      const p = await startProcess(await compileC('scm'), [work, type]);
      const r = await dumpKillRestore(p, work);
      const img = readImage(join(work, 'img')).process!;
      const owner = img.fds.find((f) => f.socket?.scm)!;
      const scm = owner.socket!.scm!;
      expect(scm.messages.map((m) => m.fds.length)).toEqual([0, 2, 0, 1]);
      // The eventfd in flight is the open file the process also holds.
      const ev = scm.files.find((f) => f.kind === 'eventfd')!;
      expect(img.fds.find((f) => f.kind === 'eventfd')!.ofd).toBe(ev.ofd);
      expect(Math.min(...scm.files.map((f) => f.fd))).toBeGreaterThan(Math.max(...img.fds.map((f) => f.fd)));
      expect(r.result.stderr).not.toMatch(/differs|restore check/);
      expect(await received(r)).toEqual(want);
    });
  }

  it('--leave-running takes the queue without consuming it: the original receives everything itself', async () => {
    const work = tmpDir('tsnap-scm-');
    const p = await startProcess(await compileC('scm'), [work, 'dgram']);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'), '--leave-running');
    expect(d.code, d.stderr).toBe(0);
    const from = p.lines().length;
    p.writeLine('check');
    await p.waitForLine(/^END/, 5000, from);
    expect(p.lines().slice(from)).toEqual(RECORDS);
  });

  it('a pipe end in flight whose other end is closed is refused before the freeze is over; the process keeps it', async () => {
    const work = tmpDir('tsnap-scm-');
    const script = `
import array, os, socket, sys
os.closerange(3, 256)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
r, w = os.pipe()
os.write(w, b'left')
a.sendmsg([b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [r]))])
os.close(r); os.close(w)
print('READY', flush=True)
sys.stdin.readline()
msg, anc, _, _ = b.recvmsg(10, socket.CMSG_SPACE(4))
fds = array.array('i'); fds.frombytes(anc[0][2])
print('GOT', msg.decode(), os.read(fds[0], 10).decode(), flush=True)
`;
    const p = await startProcess('python3', ['-u', '-c', script]);
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(d.code, d.stderr).toBe(ExitCode.unsupported);
    expect(d.stderr).toMatch(/fd \d+ of process \d+ is a unix socket with the read end of pipe:\[\d+\] in flight, whose other end is closed/);
    expect(p.alive()).toBe(true);
    p.writeLine('go');
    expect(await p.waitForLine(/^GOT/)).toBe('GOT x left');
  });
});

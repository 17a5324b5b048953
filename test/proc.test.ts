import { describe, it, expect, afterEach, afterAll } from 'vitest';
import { killPid } from './helpers/processes.js';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  parseMaps,
  readMaps,
  isSpecialVma,
  PROT_READ,
  PROT_WRITE,
  PROT_EXEC,
  readVmFlags,
  readVmFlagMasks,
  parseStat,
  readStat,
  parseStatus,
  readStatus,
  parseAuxv,
  readAuxvRaw,
  AT_PAGESZ,
  AT_ENTRY,
  listFds,
  readFdInfo,
  parseFdInfo,
  readFdTarget,
  listTasks,
  readCwd,
  readExe,
  readRoot,
  readCmdline,
  readEnviron,
  readComm,
  readPersonality,
  RLIMIT_NAMES,
  RLIM_INFINITY,
  parseLimits,
  readLimits,
} from '../src/proc/index.js';
import { SysError } from '../src/sys/errors.js';

const PAGE = 4096;
const RLIMIT_NOFILE = 7;

const children: ChildProcess[] = [];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsnap-proc-'));

afterEach(async () => {
  for (const c of children.splice(0)) {
    if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) await killPid(c.pid);
  }
});

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** Spawns a helper and resolves with the first line it prints, which it prints once set up. */
function spawnReady(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<{ pid: number; line: string }> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], ...opts });
  children.push(child);
  return new Promise((resolve, reject) => {
    let buf = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) resolve({ pid: child.pid!, line: buf.slice(0, nl) });
    });
    child.on('error', reject);
    child.on('exit', (code, sig) => reject(new Error(`${cmd} exited before ready: ${code ?? sig}`)));
  });
}

/** python3 -c CODE; CODE must print one line when ready and then sleep. */
function python(code: string, opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  return spawnReady('python3', ['-c', code], opts);
}

const SYS_nanosleep = 35;
const SYS_clock_nanosleep = 230;

/**
 * For sleep(1), which cannot announce itself: after execve the dynamic loader
 * is still mapping libraries, so the process counts as ready only once
 * /proc/PID/syscall shows it blocked in (clock_)nanosleep.
 */
async function spawnSleep(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  const child = spawn(cmd, args, { stdio: 'ignore', ...opts });
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.on('spawn', resolve);
    child.on('error', reject);
  });
  const pid = child.pid!;
  const deadline = Date.now() + 5000;
  for (;;) {
    const nr = Number(fs.readFileSync(`/proc/${pid}/syscall`, 'utf8').split(' ')[0]);
    if (nr === SYS_nanosleep || nr === SYS_clock_nanosleep) return { pid, child };
    if (Date.now() > deadline) throw new Error(`${cmd} (pid ${pid}) never reached nanosleep`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const SLEEP_FOREVER = 'import time\ntime.sleep(30)';

describe('maps', () => {
  it('shows an anonymous rw mapping at the address the process reports', async () => {
    // PROT_NONE guard pages on both sides keep the kernel from merging the
    // mapping with a neighbour, so its exact bounds can be asserted.
    const { pid, line } = await python(`
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
P = ${PAGE}
base = libc.mmap(None, 9 * P, 0, 0x22, -1, 0)
a = libc.mmap(base + P, 7 * P, 3, 0x32, -1, 0)
print(a, flush=True)
${SLEEP_FOREVER}`);
    const addr = Number(line);
    const vma = readMaps(pid).find((v) => v.start === addr);
    expect(vma).toBeDefined();
    expect(vma!.end - vma!.start).toBe(7 * PAGE);
    expect(vma!.prot).toBe(PROT_READ | PROT_WRITE);
    expect(vma!.shared).toBe(false);
    expect(vma!.path).toBe('');
    expect(vma!.inode).toBe(0);
    expect(vma!.deleted).toBe(false);
    expect(isSpecialVma(vma!)).toBeNull();
  });

  it('shows a file mapping with its path, offset and inode', async () => {
    const file = path.join(tmp, 'mapped file.bin');
    fs.writeFileSync(file, Buffer.alloc(3 * PAGE, 0x5a));
    const st = fs.statSync(file);
    const { pid, line } = await python(`
import ctypes, mmap
f = open(${JSON.stringify(file)}, 'r+b')
m = mmap.mmap(f.fileno(), ${PAGE}, offset=${PAGE})
print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)
${SLEEP_FOREVER}`);
    const addr = Number(line);
    const vma = readMaps(pid).find((v) => v.start === addr);
    expect(vma).toBeDefined();
    expect(vma!.path).toBe(file);
    expect(vma!.offset).toBe(PAGE);
    expect(vma!.inode).toBe(st.ino);
    expect(vma!.end - vma!.start).toBe(PAGE);
    expect(vma!.shared).toBe(true);
    expect(vma!.prot).toBe(PROT_READ | PROT_WRITE);
  });

  it('parses paths with spaces, deleted files, pseudo names and [vsyscall]', () => {
    const text = [
      '7f0000001000-7f0000003000 r-xp 00002000 08:01 123456                     /tmp/my dir/lib with  space.so (deleted)',
      '7f0000003000-7f0000004000 rw-p 00000000 00:00 0 ',
      '7f0000004000-7f0000005000 rw-p 00000000 00:00 0',
      '7f0000005000-7f0000006000 rw-s 00000000 00:01 42                         /memfd:buf (deleted)',
      '7f0000006000-7f0000007000 r--p 00000000 00:00 0                          [anon:my region]',
      '55d1a2b3c000-55d1a2b5d000 rw-p 00000000 00:00 0                          [heap]',
      '7ffe601cf000-7ffe601f0000 rw-p 00000000 00:00 0                          [stack]',
      '7ffe601f0000-7ffe601f4000 r--p 00000000 00:00 0                          [vvar]',
      '7ffe601f4000-7ffe601f6000 r-xp 00000000 00:00 0                          [vdso]',
      '1000000000000-1000000001000 ---p 1fffffffffffff00 103:0a 18446744073709551615 /dev/odd',
      'ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]',
      '',
    ].join('\n');
    const v = parseMaps(text);
    expect(v).toHaveLength(11);
    expect(v[0]).toEqual({
      start: 0x7f0000001000,
      end: 0x7f0000003000,
      prot: PROT_READ | PROT_EXEC,
      shared: false,
      offset: 0x2000,
      devMajor: 8,
      devMinor: 1,
      inode: 123456,
      path: '/tmp/my dir/lib with  space.so',
      deleted: true,
    });
    expect(v[1].path).toBe('');
    expect(v[2].path).toBe('');
    expect(v[2].inode).toBe(0);
    expect(v[3]).toMatchObject({ shared: true, path: '/memfd:buf', deleted: true, devMinor: 1, inode: 42 });
    expect(v[4].path).toBe('[anon:my region]');
    expect(v[4].deleted).toBe(false);
    expect(v.map(isSpecialVma)).toEqual([null, null, null, null, null, 'heap', 'stack', 'vvar', 'vdso', null, 'vsyscall']);
    expect(v[9]).toMatchObject({ start: 2 ** 48, prot: 0, devMajor: 0x103, devMinor: 0xa, offset: Number(0x1fffffffffffff00n) });
    expect(v[9].inode).toBe(Number(18446744073709551615n));
    // Exact: the address's low 21 bits are zero, so it fits a double's mantissa.
    expect(BigInt(v[10].start)).toBe(0xffffffffff600000n);
    expect(BigInt(v[10].end)).toBe(0xffffffffff601000n);
    expect(v[10].prot).toBe(PROT_EXEC);
  });

  it('rejects a malformed line', () => {
    expect(() => parseMaps('not a maps line\n')).toThrow(/malformed/);
    expect(() => parseMaps('zz-10 rw-p 0 00:00 0\n')).toThrow(/malformed/);
  });

  it('parses 100k VMAs', () => {
    const lines: string[] = [];
    for (let i = 0; i < 100_000; i++) {
      const s = 0x7f0000000000 + i * 2 * PAGE;
      lines.push(
        `${s.toString(16)}-${(s + PAGE).toString(16)} rw-p 00000000 00:00 0` +
          (i % 3 === 0 ? `                          /usr/lib/x86_64-linux-gnu/libfoo.so.${i}` : ''),
      );
    }
    const text = lines.join('\n') + '\n';
    const v = parseMaps(text);
    expect(v).toHaveLength(100_000);
    expect(v[99_999].start).toBe(0x7f0000000000 + 99_999 * 2 * PAGE);
    expect(v[3].path).toBe('/usr/lib/x86_64-linux-gnu/libfoo.so.3');
  });

  it('reads the test runner’s own maps with its heap/stack/vdso', () => {
    const v = readMaps(process.pid);
    const kinds = new Set(v.map(isSpecialVma));
    expect(kinds.has('stack')).toBe(true);
    expect(kinds.has('vdso')).toBe(true);
    for (let i = 1; i < v.length; i++) expect(v[i].start).toBeGreaterThanOrEqual(v[i - 1].end);
  });
});

describe('smaps', () => {
  it('reads VmFlags keyed by VMA start', async () => {
    const { pid } = await spawnSleep('sleep', ['30']);
    const flags = readVmFlags(pid);
    const maps = readMaps(pid);
    expect([...flags.keys()].sort((a, b) => a - b)).toEqual(maps.map((v) => v.start));
    const stack = maps.find((v) => isSpecialVma(v) === 'stack')!;
    expect(flags.get(stack.start)).toEqual(expect.arrayContaining(['rd', 'wr', 'gd']));
  });

  it('walks an smaps several times larger than its read buffer, areas cut at its end carried over', async () => {
    // 1500 areas (~1 MB of smaps, four times the 256 KiB buffer), protections
    // alternating so none merge, every third one MADV_DONTDUMP ('dd').
    const { pid } = await python(`
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
P = ${PAGE}
base = libc.mmap(None, 1500 * P, 3, 0x22, -1, 0)
for i in range(1500):
    if i % 2: libc.mprotect(base + i * P, P, 1)
    if i % 3 == 0: libc.madvise(base + i * P, P, 16)
print(base, flush=True)
${SLEEP_FOREVER}`);
    const maps = readMaps(pid);
    expect(maps.length).toBeGreaterThan(1500);
    const flags = readVmFlags(pid);
    expect([...flags.keys()]).toEqual(maps.map((v) => v.start));
    const tokens = ['dd', 'mw', 'rd', 'wr'];
    const table = readVmFlagMasks(pid, tokens, 16);
    expect(Array.from(table.starts.subarray(0, table.count))).toEqual(maps.map((v) => v.start));
    for (let i = 0; i < table.count; i++) {
      const want = tokens.reduce((m, t, b) => (flags.get(maps[i].start)!.includes(t) ? m | (1 << b) : m), 0);
      expect(table.masks[i]).toBe(want);
    }
    expect(Array.from(table.masks.subarray(0, table.count)).filter((m) => m & 1).length).toBeGreaterThanOrEqual(500);
  });
});

describe('stat', () => {
  it('reads a process whose comm contains ") ("', async () => {
    const name = 'a) (b';
    const exe = path.join(tmp, name);
    fs.copyFileSync(fs.realpathSync('/bin/sleep'), exe);
    fs.chmodSync(exe, 0o755);
    const { pid } = await spawnSleep(exe, ['30']);
    const st = readStat(pid);
    expect(st.pid).toBe(pid);
    expect(st.comm).toBe(name);
    expect(st.state).toMatch(/^[RS]$/);
    expect(st.ppid).toBe(process.pid);
    expect(st.numThreads).toBe(1);
    expect(st.startCode).toBeGreaterThan(0);
    expect(st.endCode).toBeGreaterThan(st.startCode);
    expect(st.startBrk).toBeGreaterThan(0);
    expect(st.argEnd).toBeGreaterThan(st.argStart);
    expect(st.envEnd).toBeGreaterThan(st.envStart);
    expect(st.startStack).toBeGreaterThan(st.argStart - 1024 * 1024);
    expect(st.exitCode).toBe(0);
    expect(st.startTime).toBeGreaterThanOrEqual(readStat(process.pid).startTime);
    expect(readComm(pid)).toBe(name);
  });

  it('parses synthetic text with ")" at the end of comm', () => {
    const tail = Array.from({ length: 50 }, (_, i) => String(i + 3)).slice(1).join(' ');
    const st = parseStat(`42 (x) (y)) S ${tail}\n`);
    expect(st.pid).toBe(42);
    expect(st.comm).toBe('x) (y)');
    expect(st.state).toBe('S');
    expect(st.ppid).toBe(4);
    expect(st.numThreads).toBe(20);
    expect(st.startTime).toBe(22);
    expect(st.exitCode).toBe(52);
    expect(() => parseStat('42 (x) S 1 2 3\n')).toThrow(/fields/);
  });

  it('throws SysError ENOENT once the process is gone', async () => {
    const { pid, child } = await spawnSleep('sleep', ['30']);
    const exited = new Promise((r) => child.on('exit', r));
    process.kill(pid, 'SIGKILL');
    await exited;
    let err: unknown;
    try {
      readStat(pid);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SysError);
    expect((err as SysError).code).toBe('ENOENT');
    expect((err as SysError).call).toBe(`open(/proc/${pid}/stat)`);
  });
});

describe('status', () => {
  it('reads the umask', async () => {
    const { pid } = await spawnReady('sh', ['-c', 'umask 027; echo ready; exec sleep 30']);
    expect(readStatus(pid).umask).toBe(0o027);
  });

  it('reads blocked and ignored signal masks', async () => {
    const { pid } = await python(`
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
signal.signal(signal.SIGUSR2, signal.SIG_IGN)
print('ready', flush=True)
${SLEEP_FOREVER}`);
    const s = readStatus(pid);
    expect(s.sigBlk & (1n << 9n)).toBe(1n << 9n); // SIGUSR1 = 10
    expect(s.sigIgn & (1n << 11n)).toBe(1n << 11n); // SIGUSR2 = 12
    expect(s.sigBlk & (1n << 11n)).toBe(0n);
    expect(s.tracerPid).toBe(0);
    expect(s.pid).toBe(pid);
    expect(s.tgid).toBe(pid);
    expect(s.ppid).toBe(process.pid);
    expect(s.threads).toBe(1);
    expect(s.name).toBe('python3');
    expect(s.uid).toEqual(Array(4).fill(process.getuid!()));
    expect(s.gid).toHaveLength(4);
    expect(s.nsPid[0]).toBe(pid);
    expect(s.raw['Name']).toBe('python3');
  });

  it('unescapes Name and keeps every line in raw', () => {
    const s = parseStatus(
      [
        'Name:\ta\\nb\\\\c',
        'Umask:\t0022',
        'State:\tT (stopped)',
        'Tgid:\t10',
        'Ngid:\t0',
        'Pid:\t11',
        'PPid:\t1',
        'TracerPid:\t5',
        'Uid:\t1000\t1001\t1002\t1003',
        'Gid:\t100\t101\t102\t103',
        'NSpid:\t11\t1',
        'Threads:\t2',
        'SigPnd:\t0000000000000000',
        'ShdPnd:\t8000000000000000',
        'SigBlk:\t0000000000000200',
        'SigIgn:\t0000000000001000',
        'SigCgt:\t0000000180000000',
        'CapEff:\t000001ffffffffff',
        '',
      ].join('\n'),
    );
    expect(s.name).toBe('a\nb\\c');
    expect(s.umask).toBe(0o22);
    expect(s.state).toBe('T');
    expect(s.raw['State']).toBe('T (stopped)');
    expect(s.uid).toEqual([1000, 1001, 1002, 1003]);
    expect(s.nsPid).toEqual([11, 1]);
    expect(s.shdPnd).toBe(1n << 63n);
    expect(s.capEff).toBe((1n << 41n) - 1n);
    expect(s.raw['Ngid']).toBe('0');
  });
});

describe('auxv', () => {
  it('reads our own auxiliary vector', () => {
    const raw = readAuxvRaw(process.pid);
    expect(raw.length % 16).toBe(0);
    expect(raw.readBigUInt64LE(raw.length - 16)).toBe(0n);
    const av = parseAuxv(raw);
    expect(av.length).toBe(raw.length / 16 - 1);
    expect(av.find((e) => e.type === AT_PAGESZ)?.value).toBe(4096n);
    expect(av.find((e) => e.type === AT_ENTRY)?.value).toBeGreaterThan(0n);
    expect(av.some((e) => e.type === 0)).toBe(false);
  });

  it('stops at AT_NULL', () => {
    const b = Buffer.alloc(64);
    b.writeBigUInt64LE(6n, 0);
    b.writeBigUInt64LE(4096n, 8);
    // entry 1 is AT_NULL; entry 2 is slack that must be ignored
    b.writeBigUInt64LE(9n, 32);
    expect(parseAuxv(b)).toEqual([{ type: 6, value: 4096n }]);
  });
});

describe('fds', () => {
  it('classifies files, pipes, /dev/null, fifos, dirs, memfds, sockets and eventfds', async () => {
    const file = path.join(tmp, 'data.txt');
    fs.writeFileSync(file, 'hello world\n');
    const gone = path.join(tmp, 'gone.txt');
    fs.writeFileSync(gone, 'x');
    const fifo = path.join(tmp, 'fifo');
    const { pid } = await python(`
import os, socket
def at(fd, n):
    os.dup2(fd, n)
    os.close(fd)
at(os.open(${JSON.stringify(file)}, os.O_RDWR | os.O_APPEND), 7)
os.read(7, 5)
r, w = os.pipe()
at(r, 8); at(w, 9)
at(os.open('/dev/null', os.O_WRONLY), 10)
at(os.open(${JSON.stringify(gone)}, os.O_RDONLY), 11)
os.unlink(${JSON.stringify(gone)})
os.mkfifo(${JSON.stringify(fifo)})
at(os.open(${JSON.stringify(fifo)}, os.O_RDWR), 12)
at(os.open(${JSON.stringify(tmp)}, os.O_RDONLY | os.O_DIRECTORY), 13)
at(os.memfd_create('tsnap test'), 14)
a, b = socket.socketpair()
at(a.detach(), 15)
at(os.eventfd(3), 16)
print('ready', flush=True)
${SLEEP_FOREVER}`);
    const fds = listFds(pid);
    expect(fds).toEqual(expect.arrayContaining([0, 1, 2, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]));
    expect(fds).toEqual([...fds].sort((x, y) => x - y));

    const info = readFdInfo(pid, 7);
    expect(info.fd).toBe(7);
    expect(info.pos).toBe(5);
    expect(info.flags & 0o2000).toBe(0o2000); // O_APPEND
    expect(info.flags & 3).toBe(2); // O_RDWR
    expect(info.flags & 0o2000000).toBe(0); // dup2 target is not close-on-exec
    expect(info.ino).toBe(fs.statSync(file).ino);
    expect(info.mntId).toBeGreaterThan(0);

    const t7 = readFdTarget(pid, 7);
    expect(t7).toMatchObject({ fd: 7, kind: 'file', link: file, path: file, deleted: false, size: 12 });
    expect(t7.ino).toBe(fs.statSync(file).ino);

    const t8 = readFdTarget(pid, 8);
    expect(t8.kind).toBe('pipe');
    expect(t8.path).toBeNull();
    expect(t8.link).toBe(`pipe:[${t8.ino}]`);
    expect(readFdTarget(pid, 9).ino).toBe(t8.ino);

    expect(readFdTarget(pid, 10)).toMatchObject({ kind: 'devnull', path: '/dev/null' });

    const t11 = readFdTarget(pid, 11);
    expect(t11).toMatchObject({ kind: 'file', path: gone, deleted: true, link: `${gone} (deleted)` });

    expect(readFdTarget(pid, 12)).toMatchObject({ kind: 'fifo', path: fifo, deleted: false });
    expect(readFdTarget(pid, 13)).toMatchObject({ kind: 'dir', path: tmp });
    expect(readFdTarget(pid, 14)).toMatchObject({ kind: 'memfd', path: '/memfd:tsnap test', deleted: true });
    const t15 = readFdTarget(pid, 15);
    expect(t15).toMatchObject({ kind: 'socket', path: null, link: `socket:[${t15.ino}]` });
    const t16 = readFdTarget(pid, 16);
    expect(t16).toMatchObject({ kind: 'eventfd', path: null, link: 'anon_inode:[eventfd]' });
    expect(readFdInfo(pid, 16).extra['eventfd-count'].trim()).toMatch(/^0*3$/);
  });

  it('parses extra and repeated fdinfo keys', () => {
    const fi = parseFdInfo(
      4,
      'pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n' +
        'tfd:        5 events:       19 data:                5  pos:0 ino:3 sdev:d\n' +
        'tfd:        6 events:       19 data:                6  pos:0 ino:4 sdev:d\n',
    );
    expect(fi).toMatchObject({ fd: 4, pos: 0, flags: 0o2000002, mntId: 15, ino: 1057 });
    expect(fi.extra['tfd'].split('\n')).toHaveLength(2);
    expect(fi.extra['tfd'].startsWith('5 events:')).toBe(true);
  });
});

describe('limits', () => {
  it('names all 16 resources in order', () => {
    expect(RLIMIT_NAMES).toHaveLength(16);
    expect(RLIMIT_NAMES[RLIMIT_NOFILE]).toBe('Max open files');
    const own = readLimits(process.pid);
    expect(own.map((l) => l.resource)).toEqual([...Array(16).keys()]);
  });

  it('reads a soft NOFILE limit the process set itself', async () => {
    const { pid } = await python(`
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard))
print(hard, flush=True)
${SLEEP_FOREVER}`);
    const nofile = readLimits(pid).find((l) => l.resource === RLIMIT_NOFILE)!;
    expect(nofile.name).toBe('Max open files');
    expect(nofile.soft).toBe(100n);
    const ownHard = readLimits(process.pid).find((l) => l.resource === RLIMIT_NOFILE)!.hard;
    expect(nofile.hard).toBe(ownHard);
  });

  it('maps "unlimited" to RLIM_INFINITY', () => {
    const l = parseLimits(
      'Limit                     Soft Limit           Hard Limit           Units     \n' +
        'Max cpu time              unlimited            unlimited            seconds   \n' +
        'Max nice priority         0                    0                    \n' +
        'Max realtime timeout      unlimited            200000               us        \n',
    );
    expect(l).toEqual([
      { resource: 0, name: 'Max cpu time', soft: RLIM_INFINITY, hard: 2n ** 64n - 1n },
      { resource: 13, name: 'Max nice priority', soft: 0n, hard: 0n },
      { resource: 15, name: 'Max realtime timeout', soft: RLIM_INFINITY, hard: 200000n },
    ]);
  });
});

describe('task and links', () => {
  it('lists the single thread of sleep', async () => {
    const { pid } = await spawnSleep('sleep', ['30']);
    expect(listTasks(pid)).toEqual([pid]);
  });

  it('lists every thread of a threaded process', async () => {
    const { pid } = await python(`
import threading, time
for _ in range(3):
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
print('ready', flush=True)
${SLEEP_FOREVER}`);
    const tids = listTasks(pid);
    expect(tids).toHaveLength(4);
    expect(tids).toContain(pid);
    expect(tids).toEqual([...tids].sort((a, b) => a - b));
  });

  it('reads cwd, exe, root, cmdline, environ, comm and personality', async () => {
    const { pid } = await spawnSleep('sleep', ['30'], { cwd: '/tmp', env: { ...process.env, TSNAP_PROC_TEST: 'yes' } });
    expect(readCwd(pid)).toBe('/tmp');
    expect(readRoot(pid)).toBe('/');
    expect(path.basename(readExe(pid))).toMatch(/sleep/);
    expect(fs.statSync(readExe(pid)).isFile()).toBe(true);
    expect(readCmdline(pid).toString()).toBe('sleep\x0030\x00');
    expect(readEnviron(pid).toString().split('\0')).toContain('TSNAP_PROC_TEST=yes');
    expect(readComm(pid)).toBe('sleep');
    expect(readPersonality(pid)).toBe(readPersonality(process.pid));
  });

  it('strips " (deleted)" from exe', async () => {
    const exe = path.join(tmp, 'doomed-sleep');
    fs.copyFileSync(fs.realpathSync('/bin/sleep'), exe);
    fs.chmodSync(exe, 0o755);
    const { pid } = await spawnSleep(exe, ['30']);
    fs.unlinkSync(exe);
    expect(readExe(pid)).toBe(exe);
  });
});

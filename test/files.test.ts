/**
 * File descriptors tsnap recreates: pipes with their unread bytes, eventfd,
 * timerfd, signalfd, epoll with its registrations, shared offsets of dups,
 * listening and datagram sockets. Each restored process checks itself; a
 * node http server answers on its restored listening socket.
 */
import { describe, it, expect, afterAll } from 'vitest';
import { createConnection } from 'node:net';
import { createSocket } from 'node:dgram';
import { request } from 'node:http';
import { join } from 'node:path';
import { compileC, startProcess, useProcessCleanup, tmpDir, cleanupTmpDirs } from './helpers/fixtures.js';
import { tsnap, restoreDetached, useRestoredCleanup, readImage } from './helpers/tsnap.js';
import { ExitCode } from '../src/errors.js';

useProcessCleanup();
useRestoredCleanup();
afterAll(() => cleanupTmpDirs());

function unixRead(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = createConnection(path);
    let got = '';
    c.on('data', (d) => { got += d; });
    c.on('end', () => resolve(got));
    c.on('error', reject);
  });
}

function httpGet(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: '/', agent: false }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('file descriptors', () => {
  it('pipe bytes, eventfd, timerfd, signalfd, epoll, dup offsets, unix listener and UDP socket come back', async () => {
    const work = tmpDir('tsnap-files-');
    const p = await startProcess(await compileC('fdkinds'), [work]);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const fds = readImage(dir).process!.fds;
    expect(fds.find((f) => f.fd === 40)!.ofd).toBe(fds.find((f) => f.kind === 'file' && f.fd !== 40)!.ofd);

    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    r.writeLine('check');
    expect(await r.waitForLine(/^(PASS|FAIL)/)).toBe('PASS');
    const got = unixRead(join(work, 'sock'));
    r.writeLine('accept');
    await r.waitForLine(/^ACCEPTED/);
    expect(await got).toBe('hello\n');
    const u = createSocket('udp4');
    await new Promise<void>((res) => u.send('ping', Number(p.readyInfo.udp), '127.0.0.1', () => res()));
    u.close();
    r.writeLine('udp');
    expect(await r.waitForLine(/^UDP/)).toBe('UDP ping');
  });

  it('a node http server answers on its restored listening socket, its state intact', async () => {
    const work = tmpDir('tsnap-files-');
    const script = `
const http = require('http');
let served = 0;
const s = http.createServer((req, res) => { served++; res.end('served=' + served + ' pid=' + process.pid); });
s.listen(0, '127.0.0.1', () => console.log('READY port=' + s.address().port));
`;
    const p = await startProcess(process.execPath, ['-e', script]);
    const port = Number(p.readyInfo.port);
    for (let i = 1; i <= 3; i++) expect(await httpGet(port)).toBe(`served=${i} pid=${p.pid}`);
    const dir = join(work, 'img');
    const d = await tsnap('dump', '--pid', String(p.pid), '--dir', dir);
    expect(d.code, d.stderr).toBe(0);
    await p.exited;
    const r = await restoreDetached(dir, join(work, 'pid'));
    expect(r.result.code, r.result.stderr).toBe(0);
    expect(await httpGet(port)).toBe(`served=4 pid=${p.pid}`);
    expect(await httpGet(port)).toBe(`served=5 pid=${p.pid}`);
  });

  it('an fd tsnap cannot restore is refused at dump, naming it, with the process untouched', async () => {
    const work = tmpDir('tsnap-files-');
    const script = `
import os, socket, sys, time
a, b = socket.socketpair()
print("READY", a.fileno(), flush=True)
time.sleep(600)
`;
    const p = await startProcess('python3', ['-u', '-c', script]);
    const r = await tsnap('dump', '--pid', String(p.pid), '--dir', join(work, 'img'));
    expect(r.code).toBe(ExitCode.unsupported);
    expect(r.stderr).toMatch(/fd \d+ \(unix stream socket:\[\d+\]\)/);
    expect(r.stderr.trim().split('\n').length).toBe(1);
    expect(p.alive()).toBe(true);
  });
});

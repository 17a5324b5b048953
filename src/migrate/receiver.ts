/**
 * `tsnap serve`: the receiving end of a migration. Accepts connections one
 * after another; each must present the shared token before anything is
 * written. Iterations arrive as image directories, file by file, and land
 * under DIR/<migration>/<n> as a normal image chain. After the sender's
 * COMMIT everything is durable; with --restore the process is restored from
 * the final image as soon as its pid is free.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { timingSafeEqual, createHash } from 'node:crypto';
import { mkdirSync, chmodSync, openSync, writeSync, closeSync, fsyncSync, rmSync, existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { FrameReader, Msg, WIRE_VERSION, WIRE_MAGIC, encodeDoc, decodeDoc, send } from './wire.js';
import { crc32 } from '../image/checksum.js';
import { fsyncDir } from '../image/image-dir.js';
import { restore, waitForExit } from '../restore/restore.js';
import { isTreeImage, readTreeManifest } from '../image/tree-manifest.js';
import { TsnapError } from '../errors.js';

export interface ServeOptions {
  host: string;
  port: number;
  dir: string;
  token: string;
  restore?: boolean;
  tls?: { cert: string; key: string };
  /** Stop after this many migrations (0: serve forever). */
  count?: number;
  stdout?: string;
  stderr?: string;
  onEvent?: (e: Record<string, unknown>) => void;
}

const FILE_NAMES = new Set(['inventory', 'process', 'pagemap', 'pages', 'stats']);

function sameToken(a: string, b: string): boolean {
  // Compare digests: equal length for timingSafeEqual, no early exit on a prefix.
  const h = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(h(a), h(b));
}

export function serve(opts: ServeOptions): Promise<{ server: Server; port: number; done: Promise<void> }> {
  mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  let served = 0;
  let finish: () => void = () => {};
  const done = new Promise<void>((r) => { finish = r; });
  let queue = Promise.resolve();
  const handler = (sock: Socket) => {
    // One migration at a time: the next connection waits its turn.
    queue = queue.then(() => receive(sock, opts).catch((err) => {
      opts.onEvent?.({ event: 'failed', message: (err as Error).message });
    })).then(() => {
      served++;
      if (opts.count && served >= opts.count) { server.close(); finish(); }
    });
  };
  const server: Server = opts.tls
    ? createTlsServer({ cert: readFileSync(opts.tls.cert), key: readFileSync(opts.tls.key) }, handler)
    : createServer(handler);
  return new Promise((resolvePromise, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : opts.port;
      opts.onEvent?.({ event: 'listening', host: opts.host, port });
      resolvePromise({ server, port, done });
    });
  });
}

async function receive(sock: Socket, opts: ServeOptions): Promise<void> {
  const reader = new FrameReader(sock);
  const hello = await reader.next();
  if (!hello || hello.type !== Msg.Hello) {
    await send(sock, encodeDoc(Msg.Error, { code: 'protocol', message: 'expected a tsnap HELLO' })).catch(() => {});
    sock.destroy();
    return;
  }
  const h = decodeDoc<{ magic: string; version: number; token: string; pid: number }>(hello);
  if (h.magic !== WIRE_MAGIC || h.version !== WIRE_VERSION) {
    await send(sock, encodeDoc(Msg.Error, { code: 'version', message: `protocol version ${h.version} is not supported (this receiver speaks ${WIRE_VERSION}); use the same tsnap version on both ends` })).catch(() => {});
    sock.end();
    opts.onEvent?.({ event: 'rejected', reason: 'version', version: h.version });
    return;
  }
  if (typeof h.token !== 'string' || !sameToken(h.token, opts.token)) {
    await send(sock, encodeDoc(Msg.Error, { code: 'token', message: 'wrong token' })).catch(() => {});
    sock.end();
    opts.onEvent?.({ event: 'rejected', reason: 'token' });
    return;
  }
  const name = `${h.pid}-${Date.now()}`;
  const root = resolve(opts.dir, name);
  mkdirSync(root, { mode: 0o700 });
  chmodSync(root, 0o700);
  await send(sock, encodeDoc(Msg.HelloOk, { version: WIRE_VERSION, dir: root }));
  opts.onEvent?.({ event: 'accepted', pid: h.pid, dir: root });
  let committed = false;
  let last = '';
  try {
    for (;;) {
      const f = await reader.next();
      if (!f) throw new TsnapError('targetFailed', 'the sender disconnected before committing');
      if (f.type === Msg.IterBegin) {
        const it = decodeDoc<{ name: string }>(f);
        if (!/^[A-Za-z0-9_-]+$/.test(it.name)) throw new TsnapError('badImage', `bad iteration name ${it.name}`);
        last = join(root, it.name);
        await receiveIteration(reader, last);
        opts.onEvent?.({ event: 'iteration', name: it.name });
      } else if (f.type === Msg.Commit) {
        fsyncDir(root);
        committed = true;
        await send(sock, encodeDoc(Msg.Committed, { dir: last }));
        opts.onEvent?.({ event: 'committed', dir: last });
        break;
      } else {
        throw new TsnapError('badImage', `unexpected ${Msg[f.type] ?? f.type} message`);
      }
    }
  } catch (err) {
    if (!committed) rmSync(root, { recursive: true, force: true }); // an incomplete migration is nothing
    sock.destroy();
    throw err;
  }
  if (!opts.restore) { sock.end(); return; }
  try {
    // The source is killed once we said COMMITTED: wait for its pids to be free.
    const pids = isTreeImage(last) ? readTreeManifest(last).processes.map((p) => p.pid) : [h.pid];
    for (let i = 0; i < 3000 && pids.some((pid) => existsSync(`/proc/${pid}`)); i++) await new Promise((r) => setTimeout(r, 10));
    const r = await restore({ dir: last, stdout: opts.stdout, stderr: opts.stderr });
    void waitForExit(r.pid); // reap it when it ends
    await send(sock, encodeDoc(Msg.Restored, { pid: r.pid, restoreUs: r.stats.restoreUs })).catch(() => {});
    opts.onEvent?.({ event: 'restored', pid: r.pid, dir: last, restoreUs: r.stats.restoreUs });
  } catch (err) {
    const message = `restore failed: ${(err as Error).message}; the image stays in ${last} for tsnap restore`;
    await send(sock, encodeDoc(Msg.RestoreFailed, { message, dir: last })).catch(() => {});
    opts.onEvent?.({ event: 'restore-failed', message, dir: last });
  } finally {
    sock.end();
  }
}

async function receiveIteration(reader: FrameReader, dir: string): Promise<void> {
  mkdirSync(dir, { mode: 0o700 });
  const files: string[] = [];
  for (;;) {
    const f = await reader.next();
    if (!f) throw new TsnapError('targetFailed', 'the sender disconnected in the middle of an iteration');
    if (f.type === Msg.IterEnd) break;
    if (f.type !== Msg.FileBegin) throw new TsnapError('badImage', `expected FILE_BEGIN, got ${Msg[f.type] ?? f.type}`);
    const { name } = decodeDoc<{ name: string }>(f);
    // An image file, a tree image's per-process file ("<pid>/<file>"), or its manifest.
    const m = /^(?:(\d{1,10})\/)?([a-z]+)$/.exec(name);
    if (!m || !(FILE_NAMES.has(m[2]) || (m[2] === 'tree' && !m[1]))) throw new TsnapError('badImage', `unexpected file ${name}`);
    if (m[1]) mkdirSync(join(dir, m[1]), { recursive: true, mode: 0o700 });
    const path = join(dir, name);
    const fd = openSync(path, 'wx', 0o600);
    let length = 0;
    let crc = 0;
    try {
      for (;;) {
        const d = await reader.next();
        if (!d) throw new TsnapError('targetFailed', `the sender disconnected in the middle of ${name}`);
        if (d.type === Msg.FileData) {
          let off = 0;
          while (off < d.payload.length) off += writeSync(fd, d.payload, off, d.payload.length - off);
          length += d.payload.length;
          crc = crc32(d.payload, crc);
          continue;
        }
        if (d.type !== Msg.FileEnd) throw new TsnapError('badImage', `expected FILE_DATA or FILE_END in ${name}`);
        const end = decodeDoc<{ length: number; crc32: number }>(d);
        if (end.length !== length || end.crc32 !== crc) {
          throw new TsnapError('badImage', `${name}: received ${length} bytes (crc ${crc}), the sender sent ${end.length} (crc ${end.crc32})`);
        }
        fsyncSync(fd);
        break;
      }
    } finally {
      closeSync(fd);
    }
    files.push(name);
  }
  if (!files.includes('inventory') && !files.includes('tree')) throw new TsnapError('badImage', 'an iteration arrived without its inventory');
  for (const sub of new Set(files.filter((f) => f.includes('/')).map((f) => f.split('/')[0]))) fsyncDir(join(dir, sub));
  fsyncDir(dir);
}

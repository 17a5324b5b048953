#!/usr/bin/env node
// Hostile clients against a real `tsnap serve --restore --new-pid`: one
// crafted stream per case (truncated, oversized and garbage frames before
// and after authentication, out-of-order messages, a sender gone silent),
// then 70 idle connections and a real HELLO. A case fails when serve dies,
// prints a stack trace, leaves anything in its --dir, or gives no answer
// within 15 s. Needs a build (npm run build) and root.
//
//   node scripts/hostile-serve.mjs        # exit 1 when a case failed
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
const W = join(dirname(fileURLToPath(import.meta.url)), '..');
const { encodeDoc, encodeFrame, Msg, WIRE_MAGIC, WIRE_VERSION, FrameReader, decodeDoc } = await import(`${W}/dist/src/migrate/wire.js`);
const { packr } = await import(`${W}/dist/src/image/metadata.js`);
const dir = mkdtempSync(join(tmpdir(), 'tsnap-hostile-'));
const srv = spawn(process.execPath, [`${W}/bin/tsnap`, 'serve', '--listen', '127.0.0.1:0', '--dir', dir, '--token', 'sesame', '--json', '--restore', '--new-pid', '--handshake-timeout', '3', '--idle-timeout', '2'], { stdio: ['ignore', 'ignore', 'pipe'] });
let err = '';
srv.stderr.on('data', (d) => { err += d; });
while (!/"listening"/.test(err)) await new Promise((r) => setTimeout(r, 50));
const port = JSON.parse(err.split('\n').find((l) => l.includes('"listening"'))).port;
const cat = (bs) => Buffer.concat(bs.flat());
const hello = (f = {}) => encodeDoc(Msg.Hello, { magic: WIRE_MAGIC, version: WIRE_VERSION, token: 'sesame', pid: 4242, tool: 'x', ...f });
const raw = (type, payload) => encodeFrame(type, payload);
const hdr = (len, type, crc = 0) => { const h = Buffer.alloc(9); h.writeUInt32LE(len, 0); h.writeUInt8(type, 4); h.writeUInt32LE(crc, 5); return h; };
const deep = (n) => { const b = Buffer.alloc(n, 0x91); b[n - 1] = 0xc0; return b; };
const cases = {
  'header only, then close': [hdr(10, Msg.Hello)],
  'empty HELLO': [raw(Msg.Hello, Buffer.alloc(0))],
  'HELLO nested 60k deep': [raw(Msg.Hello, deep(60000))],
  'HELLO token a map with toString': [encodeDoc(Msg.Hello, { magic: WIRE_MAGIC, version: WIRE_VERSION, token: { toString: 'x' }, pid: 1 })],
  'HELLO version uint64': [raw(Msg.Hello, Buffer.concat([Buffer.from([0x84, 0xa5]), Buffer.from('magic'), packr.pack(WIRE_MAGIC), Buffer.from([0xa7]), Buffer.from('version'), Buffer.from([0xcf, 0x80, 0, 0, 0, 0, 0, 0, 1]), Buffer.from([0xa5]), Buffer.from('token'), packr.pack('sesame'), Buffer.from([0xa3]), Buffer.from('pid'), Buffer.from([1])]))],
  'HELLO a list': [encodeDoc(Msg.Hello, [1, 2, 3])],
  'HELLO a Date ext': [raw(Msg.Hello, Buffer.from([0xd6, 0xff, 0, 0, 0, 1]))],
  'HELLO record ext': [raw(Msg.Hello, Buffer.from('d4724094a56d61676963a776657273696f6ea5746f6b656ea3706964a954534e41505749524502a7736573616d6505'.replace('a17805', ''), 'hex'))],
  'HELLO pid 2^22+1': [hello({ pid: (1 << 22) + 1 })],
  'HELLO pid NaN': [hello({ pid: NaN })],
  'type 255 frame': [raw(255, Buffer.from('x'))],
  '64 KiB + 1 pre-auth': [hdr((64 << 10) + 1, Msg.Hello)],
  'bad crc': [hdr(1, Msg.Hello, 1), Buffer.from([0xc0])],
  // authenticated
  'auth: FILE_BEGIN first': [hello(), encodeDoc(Msg.FileBegin, { name: 'pages' })],
  'auth: ITER_BEGIN ../x': [hello(), encodeDoc(Msg.IterBegin, { name: '../x' })],
  'auth: ITER_BEGIN name map': [hello(), encodeDoc(Msg.IterBegin, { name: { toString: 1 } })],
  'auth: ITER_BEGIN nested': [hello(), raw(Msg.IterBegin, deep(200000))],
  'auth: FILE_BEGIN ../../etc/passwd': [hello(), encodeDoc(Msg.IterBegin, { name: '1' }), encodeDoc(Msg.FileBegin, { name: '../../etc/passwd' })],
  'auth: FILE_DATA 4 MiB then FILE_END wrong length': [hello(), encodeDoc(Msg.IterBegin, { name: '1' }), encodeDoc(Msg.FileBegin, { name: 'pages' }), raw(Msg.FileData, Buffer.alloc(4 << 20)), encodeDoc(Msg.FileEnd, { length: 5, crc32: 0 })],
  'auth: frame > 4 MiB': [hello(), hdr((4 << 20) + 1, Msg.FileData)],
  'auth: COMMIT at once': [hello(), encodeDoc(Msg.Commit, {})],
  'auth: POSTCOPY first': [hello(), encodeDoc(Msg.Postcopy, { ranges: [[0, 4096]] })],
  'auth: POSTCOPY ranges huge': [hello(), encodeDoc(Msg.Postcopy, { ranges: [[0, 2 ** 64]] })],
  'auth: final ready then close': [hello(), encodeDoc(Msg.IterBegin, { name: 'final', ready: true })],
  'auth: LAYOUT first': [hello(), encodeDoc(Msg.Layout, { vmas: [], zero: [], incremental: false })],
  'auth: LAYOUT 200k zero ranges': [hello(), encodeDoc(Msg.IterBegin, { name: '1' }), encodeDoc(Msg.Layout, { vmas: [], zero: Array.from({ length: 200000 }, (_, i) => [i * 8192, i * 8192 + 4096]), incremental: false })],
  'auth: LAYOUT vma end<start': [hello(), encodeDoc(Msg.IterBegin, { name: '1' }), encodeDoc(Msg.Layout, { vmas: [{ start: 0x20000, end: 0x10000, prot: 3, shared: false, pgoff: 0, path: '', special: null, file: null, dumped: true }], zero: [], incremental: false })],
  'auth: PAGE_CHUNK garbage': [hello(), encodeDoc(Msg.IterBegin, { name: '1' }), encodeDoc(Msg.Layout, { vmas: [], zero: [], incremental: false }), raw(Msg.PageChunk, Buffer.alloc(100, 0xff))],
  'auth: PAGE_CHUNK empty': [hello(), encodeDoc(Msg.IterBegin, { name: '1' }), encodeDoc(Msg.Layout, { vmas: [], zero: [], incremental: false }), raw(Msg.PageChunk, Buffer.alloc(0))],
  'auth: ITER_END with nothing': [hello(), encodeDoc(Msg.IterBegin, { name: '1' }), encodeDoc(Msg.IterEnd, {})],
  'auth: two ITER_END then COMMIT': [hello(), encodeDoc(Msg.IterBegin, { name: 'final' }), encodeDoc(Msg.IterEnd, {}), encodeDoc(Msg.IterEnd, {}), encodeDoc(Msg.Commit, {})],
  'auth: empty final then COMMIT': [hello(), encodeDoc(Msg.IterBegin, { name: 'final' }), encodeDoc(Msg.IterEnd, {}), encodeDoc(Msg.Commit, {})],
  'auth: server messages sent to it': [hello(), encodeDoc(Msg.Committed, { dir: '/' }), encodeDoc(Msg.PageRequest, { ranges: [] })],
  'auth: PAGE_DATA unasked': [hello(), raw(Msg.PageData, Buffer.alloc(64))],
};
let bad = 0;
for (const [name, frames] of Object.entries(cases)) {
  const before = err.length;
  const sock = connect(port, '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  sock.on('error', () => {});
  const reader = new FrameReader(sock, 64 << 20);
  for (const f of frames) sock.write(cat([f]));
  const answers = [];
  const t = Date.now();
  let outcome = 'closed';
  for (;;) {
    const timer = new Promise((r) => setTimeout(() => r('timeout'), 15000));
    const f = await Promise.race([reader.next().catch((e) => ({ error: e.message })), timer]);
    if (f === 'timeout') { outcome = 'TIMEOUT'; break; }
    if (!f) break;
    if (f.error) { answers.push(`(${f.error})`); break; }
    let d; try { d = decodeDoc(f); } catch (e) { d = e.message; }
    answers.push(`${Msg[f.type]}${f.type === Msg.Error ? `: ${d.message}` : ''}`);
  }
  sock.destroy();
  await new Promise((r) => setTimeout(r, 300));
  const said = err.slice(before);
  const stack = /\n\s+at |TypeError|RangeError|ReferenceError/.test(said);
  const left = readdirSync(dir);
  const dead = srv.exitCode !== null;
  const fail = stack || dead || outcome === 'TIMEOUT' || left.length > 0;
  if (fail) bad++;
  console.log(`${fail ? 'FAIL' : 'ok  '} ${name}: ${answers.join(' | ') || '-'} ${outcome}${stack ? ' STACK' : ''}${dead ? ' SERVE DIED' : ''}${left.length ? ` LEFT ${left}` : ''} (${Date.now() - t} ms)`);
  if (fail && said) console.log('   serve said: ' + said.trim().split('\n').slice(-4).join('\n   '));
  for (const l of left) rmSync(join(dir, l), { recursive: true, force: true });
  if (dead) break;
}
// busy: 70 idle connections, then a real HELLO still answered
const idle = [];
for (let i = 0; i < 70; i++) { const s = connect(port, '127.0.0.1'); s.on('error', () => {}); idle.push(s); }
await new Promise((r) => setTimeout(r, 500));
const s = connect(port, '127.0.0.1'); s.on('error', () => {});
await new Promise((r) => s.once('connect', r));
const rd = new FrameReader(s, 64 << 20);
s.write(cat([hello()]));
const f = await rd.next();
console.log(`busy: ${f ? Msg[f.type] : 'closed'}`);
if (f?.type !== Msg.HelloOk) bad++;
s.destroy(); idle.forEach((x) => x.destroy());
await new Promise((r) => setTimeout(r, 500));
if (srv.exitCode !== null) bad++;
console.log(`serve alive: ${srv.exitCode === null}; ${bad} failing case(s)`);
srv.kill('SIGTERM');
await new Promise((r) => srv.on('close', r));
console.log('serve stderr lines:', err.split('\n').length, 'stack traces:', (err.match(/\n\s+at /g) ?? []).length);
rmSync(dir, { recursive: true, force: true });
process.exitCode = bad ? 1 : 0;

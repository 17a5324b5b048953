/**
 * The network lock of TCP connections taken with repair mode: from the
 * freeze until the connection lives again, every packet of the connection
 * is dropped, both ways, by two netfilter rules (iptables / ip6tables,
 * filter table, INPUT and OUTPUT). Without it, what the peer sends while
 * the process is frozen or not yet restored is acknowledged by a socket
 * about to vanish (the data is lost) or answered with a RST by a host with
 * no socket for it (the connection is lost); with it, the peer only sees
 * silence and retransmits.
 *
 * Who owns a rule is in its comment, `tsnap-lock ID owner=PID.START` or
 * `tsnap-lock ID image`:
 * - a dump locks with its own tsnap as owner, and hands the deletion to
 *   the guardian first, so a tsnap that dies any way at all (SIGKILL
 *   included) leaves no rule: the guardian runs it on EOF;
 * - a process that lives on (--leave-running, any failure) is unlocked;
 * - a dump that kills its process hands the rules to the image (same ID,
 *   recorded in `TcpImage.lock`): the connection must stay silent until
 *   its restore, which deletes them when it lets the connection go, or
 *   when it fails (a retried restore then finds a reset connection);
 * - rules of an owner that is gone (the guardian killed too) are swept by
 *   the next tsnap that locks or unlocks.
 * Rule changes go through `iptables-restore --noflush`: one atomic
 * transaction per family and step.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { AF_INET, AF_INET6, memfdCreate, Guardian } from '../sys/index.js';
import { readStat } from '../proc/index.js';
import { TsnapError } from '../errors.js';

/** One connection, as netfilter sees its packets (a v4-mapped IPv6 socket sends IPv4). */
export interface Conn {
  v6: boolean;
  local: string;
  lport: number;
  peer: string;
  pport: number;
}

function addrOf(sa: Buffer): { v6: boolean; ip: string; port: number } {
  const family = sa.readUInt16LE(0);
  const port = sa.readUInt16BE(2);
  if (family === AF_INET) return { v6: false, ip: `${sa[4]}.${sa[5]}.${sa[6]}.${sa[7]}`, port };
  if (family !== AF_INET6 || sa.length < 24) throw new TsnapError('internal', `not an inet address (family ${family})`);
  const a = sa.subarray(8, 24);
  if (a.subarray(0, 10).every((b) => b === 0) && a[10] === 0xff && a[11] === 0xff) return { v6: false, ip: `${a[12]}.${a[13]}.${a[14]}.${a[15]}`, port };
  const parts: string[] = [];
  for (let i = 0; i < 16; i += 2) parts.push(a.readUInt16BE(i).toString(16));
  return { v6: true, ip: parts.join(':'), port };
}

export function connOf(local: Buffer, peer: Buffer): Conn {
  const l = addrOf(local);
  const p = addrOf(peer);
  return { v6: l.v6 || p.v6, local: l.ip, lport: l.port, peer: p.ip, pport: p.port };
}

/**
 * The mark of the segments restore replays itself (a FIN the peer had
 * sent, its ACK of ours: tcp.ts), which the lock lets through.
 */
export const REPLAY_MARK = 0x7473;

function ruleSpecs(c: Conn, tag: string): string[] {
  const m = `-m mark ! --mark 0x${REPLAY_MARK.toString(16)} -m comment --comment "${tag}" -j DROP`;
  return [
    `INPUT -p tcp -s ${c.peer} --sport ${c.pport} -d ${c.local} --dport ${c.lport} ${m}`,
    `OUTPUT -p tcp -s ${c.local} --sport ${c.lport} -d ${c.peer} --dport ${c.pport} ${m}`,
  ];
}

function script(lines: string[]): string {
  return `*filter\n${lines.join('\n')}\nCOMMIT\n`;
}

function restoreTool(v6: boolean): string {
  return v6 ? 'ip6tables-restore' : 'iptables-restore';
}

/** One transaction; throws with the tool's own message. */
function apply(v6: boolean, lines: string[], what: string): void {
  if (lines.length === 0) return;
  const r = spawnSync(restoreTool(v6), ['-w', '--noflush'], { input: script(lines), encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    const why = r.error ? r.error.message : (r.stderr || '').trim().split('\n')[0];
    throw new TsnapError('kernel', `cannot ${what} (${restoreTool(v6)}: ${why}); tsnap locks TCP connections with netfilter rules, which need iptables`);
  }
}

/** The filter rules of one family whose comment names tsnap-lock, as `-A` lines of iptables-save. */
function listLocks(v6: boolean): string[] {
  const r = spawnSync(v6 ? 'ip6tables-save' : 'iptables-save', ['-t', 'filter'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return [];
  return r.stdout.split('\n').filter((l) => l.startsWith('-A ') && l.includes('"tsnap-lock '));
}

function ownerTag(): string {
  return `owner=${process.pid}.${readStat(process.pid).startTime}`;
}

/**
 * Before the freeze: the tool the lock needs is there (`local`: the
 * socket's address, for the family). Refused by name otherwise.
 */
export function checkLockTool(local: Buffer): void {
  // While nothing is frozen: the sweep is not free.
  sweepDeadOwners();
  const tool = restoreTool(addrOf(local).v6 && !isMapped(local));
  const r = spawnSync(tool, ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new TsnapError('unsupported', `TCP connections are locked while frozen with netfilter rules, and ${tool} is not usable here (${r.error ? r.error.message : (r.stderr || '').trim()}); install iptables`);
  }
}

function isMapped(sa: Buffer): boolean {
  return sa.readUInt16LE(0) === AF_INET6 && sa.length >= 24 && !addrOf(sa).v6;
}

/** A connection this tsnap locked. */
export interface Lock {
  id: string;
  conn: Conn;
  local: Buffer;
  peer: Buffer;
  /** The guardian's hold on the deletion, or null once dropped. */
  guard: bigint | null;
}

/**
 * Locks a connection for the dump: the deletion is handed to the guardian
 * before the rules exist, so no instant has a rule nobody would remove.
 */
export function lockConnection(local: Buffer, peer: Buffer): Lock {
  sweepDeadOwners();
  const conn = connOf(local, peer);
  const id = randomBytes(6).toString('hex');
  const tag = `tsnap-lock ${id} ${ownerTag()}`;
  const specs = ruleSpecs(conn, tag);
  const mfd = memfdCreate('tsnap-unlock', 1 /* MFD_CLOEXEC */);
  let guard: bigint;
  try {
    writeSync(mfd, script(specs.map((s) => `-D ${s}`)));
    guard = Guardian.get().holdUnlock(mfd, conn.v6);
  } finally {
    closeSync(mfd);
  }
  const lock: Lock = { id, conn, local, peer, guard };
  try {
    apply(conn.v6, specs.map((s) => `-I ${s.replace(/^(\w+) /, '$1 1 ')}`), `lock the TCP connection ${describeConn(conn)}`);
  } catch (err) {
    dropGuard(lock);
    throw err;
  }
  return lock;
}

function dropGuard(l: Lock): void {
  if (l.guard === null) return;
  try { Guardian.get().dropUnlock(l.guard); } catch { /* the guardian is gone: nothing to drop */ }
  l.guard = null;
}

/** The process lives on: its connection may talk again. */
export function unlock(l: Lock): void {
  deleteTagged(l.conn.v6, (line) => line.includes(`"tsnap-lock ${l.id} `));
  dropGuard(l);
}

/** The process is killed with the image written: the lock stays, owned by the image, until its restore. */
export function handToImage(l: Lock): void {
  const specs = ruleSpecs(l.conn, `tsnap-lock ${l.id} image`);
  const mine = listLocks(l.conn.v6).filter((line) => line.includes(`"tsnap-lock ${l.id} owner=`));
  apply(l.conn.v6, [...specs.map((s) => `-I ${s.replace(/^(\w+) /, '$1 1 ')}`), ...mine.map((line) => line.replace(/^-A /, '-D '))], `hand the lock of ${describeConn(l.conn)} to the image`);
  dropGuard(l);
}

/**
 * Restore is done with a connection of an image (restored, or the restore
 * failed), or the image is given up (release-locks): its rules go.
 * Returns how many there were.
 */
export function unlockImageConnection(id: string, local: Buffer, peer: Buffer): number {
  sweepDeadOwners();
  return deleteTagged(connOf(local, peer).v6, (line) => line.includes(`"tsnap-lock ${id} image"`));
}

function deleteTagged(v6: boolean, match: (line: string) => boolean): number {
  const lines = listLocks(v6).filter(match);
  apply(v6, lines.map((line) => line.replace(/^-A /, '-D ')), 'unlock a TCP connection');
  return lines.length;
}

let swept = false;

/** Rules whose owning tsnap died with its guardian: nobody else would remove them. Once per tsnap. */
export function sweepDeadOwners(): void {
  if (swept) return;
  swept = true;
  for (const v6 of [false, true]) {
    const dead = listLocks(v6).filter((line) => {
      const m = / owner=(\d+)\.(\d+)"/.exec(line);
      if (!m) return false;
      try { return readStat(Number(m[1])).startTime !== Number(m[2]); } catch { return true; }
    });
    try { apply(v6, dead.map((line) => line.replace(/^-A /, '-D ')), 'remove the lock rules of a dead tsnap'); } catch { /* another tsnap swept them first */ }
  }
}

export function describeConn(c: Conn): string {
  const w = (ip: string, port: number) => (c.v6 ? `[${ip}]:${port}` : `${ip}:${port}`);
  return `${w(c.local, c.lport)} <-> ${w(c.peer, c.pport)}`;
}

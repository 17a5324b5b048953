/**
 * The restore's self-check of TCP connections, from what /proc shows of
 * them (/proc/PID/net/tcp and tcp6, by inode): each restored connection
 * is there, in the state of its image, with as many bytes queued each way
 * (a FIN not yet taken by the reader, or not yet acknowledged, counts one).
 */
import { readFileSync, statSync } from 'node:fs';
import type { FdImage } from '../../formats/schema.js';
import { finCounts, sendQueueAtResume } from './tcp.js';
import { tcpStateName } from './socket.js';

interface Row { state: number; tx: number; rx: number }

function table(pid: number): Map<number, Row> {
  const out = new Map<number, Row>();
  for (const name of ['tcp', 'tcp6']) {
    let text = '';
    try { text = readFileSync(`/proc/${pid}/net/${name}`, 'utf8'); } catch { continue; }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const [tx, rx] = f[4].split(':').map((h) => parseInt(h, 16));
      out.set(Number(f[9]), { state: parseInt(f[3], 16), tx, rx });
    }
  }
  return out;
}

export function checkRestoredTcp(fds: FdImage[], pid: number, out: string[]): void {
  const conns = fds.filter((f) => f.socket?.tcp);
  if (conns.length === 0) return;
  const rows = table(pid);
  const seen = new Set<number>();
  for (const f of conns) {
    const t = f.socket!.tcp!;
    let ino: number;
    try { ino = statSync(`/proc/${pid}/fd/${f.fd}`).ino; } catch { continue; } // reported by the fd check
    if (seen.has(ino)) continue; // a dup of one already checked
    seen.add(ino);
    const row = rows.get(ino);
    const want = t.state ?? 1;
    if (!row) { out.push(`fd ${f.fd}: the TCP connection is not in /proc/${pid}/net (state ${tcpStateName(want)} expected)`); continue; }
    if (row.state !== want) out.push(`fd ${f.fd}: TCP state ${tcpStateName(row.state)}, the image's ${tcpStateName(want)}`);
    const fin = finCounts(want);
    // Checked in repair mode: a send queue that goes in as the connection resumes is not there yet.
    const tx = (sendQueueAtResume(t) ? 0 : t.sendQueue.length) + fin.tx;
    const rx = t.recvQueue.length + fin.rx;
    if (row.tx !== tx || row.rx !== rx) out.push(`fd ${f.fd}: TCP queues ${row.tx} bytes to send, ${row.rx} to read; the image's ${tx} and ${rx}`);
  }
}

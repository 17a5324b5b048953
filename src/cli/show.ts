/** `tsnap show`: a human summary of an image, or all of its metadata as JSON. */
import { join } from 'node:path';
import { readChain } from '../image/image-reader.js';
import { isTreeImage, readTreeManifest, imagedMembers } from '../image/tree-manifest.js';
import { REG_NAMES } from '../sys/uapi.js';
import { PageWhere, type CredsImage } from '../../formats/schema.js';
import { formatBytes, formatUs, hex } from '../format.js';
import { PAGE_SIZE } from '../sys/uapi.js';

/** JSON with BigInt as hex strings and Buffers as hex. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v) => {
    if (typeof v === 'bigint') return hex(v);
    if (v && typeof v === 'object' && v.type === 'Buffer' && Array.isArray(v.data)) return Buffer.from(v.data).toString('hex');
    if (v instanceof Uint8Array) return Buffer.from(v).toString('hex');
    return v;
  }, 2);
}

export function showImage(dir: string, json: boolean): string {
  if (isTreeImage(dir)) {
    const m = readTreeManifest(dir);
    if (json) {
      return toJson({ tree: m, processes: imagedMembers(m).map((p) => JSON.parse(showImage(join(dir, p.dir), true))) }) + '\n';
    }
    return `process tree of ${m.root} (${m.contents}, ${m.processes.length} processes, ${m.createdAt})\n`
      + m.processes.map((p) => `  ${p.pid} (parent ${p.ppid}): ${p.zombie ? `exited, not yet reaped (wait status ${p.zombie.status})` : join(dir, p.dir)}\n`).join('')
      + imagedMembers(m).map((p) => `\n== ${p.pid} ==\n${showImage(join(dir, p.dir), false)}`).join('');
  }
  const chain = readChain(dir);
  const img = chain[0];
  if (json) {
    return toJson({
      inventory: img.inventory,
      process: img.process,
      pagemap: img.pagemap,
      stats: img.stats,
      chain: chain.map((c) => ({ dir: c.dir, imageId: c.inventory.imageId, kind: c.inventory.kind, contents: c.inventory.contents ?? 'dump', bytesStored: c.stats?.bytesStored ?? null, pagesWritten: c.stats?.pagesWritten ?? null })),
    }) + '\n';
  }
  const p = img.process;
  const inv = img.inventory;
  const out: string[] = [];
  out.push(`image ${inv.imageId} (${inv.kind}${inv.contents === 'predump' ? ' pre-dump' : ''}, format v${inv.formatVersion}, tsnap ${inv.tool.version}, ${inv.createdAt})`);
  if (p) {
    out.push(`process ${p.pid} "${p.comm}" exe ${p.exe.path}`);
    out.push(`  ppid ${p.ppid} pgid ${p.pgid} sid ${p.sid} uid ${p.creds.uid.join('/')} cwd ${p.cwd} umask ${p.umask.toString(8).padStart(4, '0')}`);
    const t = p.threads[0];
    if (t.creds) out.push(`  credentials (thread ${t.tid}): ${credsLine(t.creds)}`);
    const regs = REG_NAMES.map((n, i) => `${n}=${hex(t.regs.readBigUInt64LE(i * 8))}`);
    out.push(`registers (thread ${t.tid}):`);
    for (let i = 0; i < regs.length; i += 4) out.push(`  ${regs.slice(i, i + 4).join(' ')}`);
    out.push(`  xsave ${t.xstate.length} bytes, sigmask ${hex(t.sigmask)}${t.syscallRestart ? `, in syscall ${t.syscallRestart.nr} (restart -${t.syscallRestart.code})` : ''}`);
    const caught = p.signals.actions.filter((a) => a.handler > 1n);
    out.push(`signals: ${caught.length} handled (${caught.map((a) => a.signo).join(',') || '-'}), altstack ${t.sigaltstack.flags & 2 ? 'off' : `${hex(t.sigaltstack.sp)}+${t.sigaltstack.size}`}`);
  } else {
    out.push(`process ${inv.pid} (pre-dump: memory only; tracking held by pid ${inv.tracking?.holderPid ?? '-'})`);
  }
  const vmas = img.pagemap.vmas ?? [];
  out.push(`memory: ${vmas.length} VMAs (pages stored in this image)`);
  const runs = img.pagemap.runs;
  let ri = 0;
  for (const v of vmas) {
    // Runs may span adjacent VMAs: count only the overlap.
    let stored = 0;
    while (ri < runs.length && runs[ri].start + runs[ri].pages * PAGE_SIZE <= v.start) ri++;
    for (let j = ri; j < runs.length && runs[j].start < v.end; j++) {
      if (runs[j].where !== PageWhere.Here) continue;
      const from = Math.max(v.start, runs[j].start);
      const to = Math.min(v.end, runs[j].start + runs[j].pages * PAGE_SIZE);
      if (to > from) stored += (to - from) / PAGE_SIZE;
    }
    const prot = `${v.prot & 1 ? 'r' : '-'}${v.prot & 2 ? 'w' : '-'}${v.prot & 4 ? 'x' : '-'}${v.shared ? 's' : 'p'}`;
    out.push(`  ${hex(v.start).padStart(14)}-${hex(v.end).padEnd(14)} ${prot} ${formatBytes(v.end - v.start).padStart(10)} ${String(stored).padStart(7)} pages  ${v.path}${v.file?.deleted ? ' (deleted)' : ''}${v.guards?.length ? `  guard regions ${v.guards.map(([a, b]) => `${hex(a)}-${hex(b)}`).join(' ')}` : ''}`);
  }
  if (p) {
    out.push(`files: ${p.fds.length}`);
    for (const f of p.fds) {
      out.push(`  fd ${f.fd}: ${f.kind} ${f.link} flags 0${f.flags.toString(8)} pos ${f.pos}`);
      const scm = f.socket?.scm;
      if (scm) out.push(`    queued: ${scm.messages.length} messages, in flight: ${scm.files.map((g) => g.link).join(', ') || 'no files'}`);
    }
    for (const g of p.mappedGhosts ?? []) {
      out.push(`  mapped deleted file ${g.path}: ${g.alias ? `reopened as ${g.alias}` : `${formatBytes((g.extents ?? []).reduce((n, e) => n + e.data.length, 0))} of data, size ${formatBytes(g.size)}`}`);
    }
    for (const r of p.aioRings ?? []) out.push(`  aio ring ${hex(r.start)}: ${r.ring.readUInt32LE(4)} events, head ${r.ring.readUInt32LE(8)} tail ${r.ring.readUInt32LE(12)}`);
  }
  const raw = img.pagemap.chunks.reduce((s, c) => s + c.rawLength, 0);
  const stored = img.pagemap.chunks.reduce((s, c) => s + c.storedLength, 0);
  out.push(`pages: ${raw / PAGE_SIZE} stored in ${img.pagemap.chunks.length} chunks, ${formatBytes(raw)} -> ${formatBytes(stored)} (${inv.compression}, ratio ${stored ? (raw / stored).toFixed(2) : '-'})`);
  if (img.stats) {
    const s = img.stats;
    out.push(`stats: frozen ${formatUs(s.frozenUs)}, memory ${formatUs(s.memdumpUs)} at ${s.throughputMiBps.toFixed(0)} MiB/s, ${s.pagesSlowPath} pages via /proc/PID/mem`);
  }
  out.push('chain (newest first):');
  for (const c of chain) {
    const st = c.stats;
    out.push(`  ${c.dir}  ${c.inventory.kind}${c.inventory.contents === 'predump' ? ' pre-dump' : ''}  ${st ? `${st.pagesWritten} pages, ${formatBytes(st.bytesStored)} stored` : ''}`);
  }
  return out.join('\n') + '\n';
}

function credsLine(c: CredsImage): string {
  return `uid ${c.uid.join('/')} gid ${c.gid.join('/')} groups ${c.groups.join(',') || '-'} `
    + `caps eff ${hex(c.capEff)} prm ${hex(c.capPrm)} inh ${hex(c.capInh)} bnd ${hex(c.capBnd)} amb ${hex(c.capAmb)} `
    + `securebits ${hex(c.securebits)}${c.noNewPrivs ? ' no_new_privs' : ''}`;
}

/**
 * The VmFlags masks of readVmFlagMasks (smaps.ts), read by a BPF task_vma
 * iterator (tsnap-vmaiter.c) instead of /proc/PID/smaps: the same facts,
 * each area's vm_flags, without the kernel formatting ~700 bytes of text
 * per area (10 000 areas: ~1.7 ms against 35-40 ms for smaps here).
 *
 * smaps prints each vm_flags bit as a two-letter token; which bit is which
 * token is the kernel's business, and differs between versions. So nothing
 * is assumed: once per process, tsnap maps one page per token in its own
 * address space (tsnap_vmaiter_probes), reads its own smaps and its own
 * areas through the iterator, and takes for each token the one bit that is
 * set exactly where smaps shows the token, over every area of both reads
 * (its probes and the rest of tsnap's memory). A token without exactly one
 * such bit (a kernel that refused its probe, two bits always together),
 * two iterator reads that differ (tsnap's map changed meanwhile), or an
 * area only smaps shows other than the kernel's one gate area: the
 * iterator is not used in this process, and smaps is read as before.
 *
 * smaps lists the gate area ([vsyscall]) after the process's own areas;
 * the iterator does not (it is no VMA of the process). It is one area of
 * the kernel's, the same in every process: its start and tokens come from
 * tsnap's own smaps, and are appended, so the table is smaps's.
 */
import { vmaIterLoad, vmaIterRead, vmaIterProbes, vmaIterUnprobe } from '../sys/proc-read.js';
import { readVmFlagMasks, type VmFlagsTable } from './smaps.js';
import { mark } from '../trace.js';

/** The tokens of tsnap_vmaiter_probes, in its order (0: a plain page, 13: the page without mw). */
const PROBE_TOKENS = ['', 'sr', 'rr', 'dc', 'dd', 'mg', 'hg', 'nh', 'wf', 'lo', 'lf', 'nr', 'dp', 'mw'];
/** The tokens whose bits are learnt: the probes' (VMA_RESTORED_FLAGS's, formats/schema.ts). */
const LEARNT = PROBE_TOKENS.slice(1);

interface Learnt {
  prog: number;
  /** Token -> its vm_flags bit, as a mask of the low and of the high 32 bits. */
  bits: Map<string, { lo: number; hi: number }>;
  /** The gate area as smaps shows it, or null when smaps shows none. */
  gate: { start: number; tokens: readonly string[] } | null;
}

/** undefined: not tried yet; null: not usable in this process (why: `unusable`). */
let learnt: Learnt | null | undefined;
/** Why the iterator is not used here (for tests and TSNAP_TRACE). */
export let unusable = '';

/** Two u32 halves of a start, as the smaps parsers round one past 2^53 ([vsyscall]). */
const startOf = (out: Uint32Array, i: number) => out[4 * i + 1] * 0x100000000 + out[4 * i];

function readAll(prog: number, pid: number, hint: number): { out: Uint32Array; count: number } | number {
  for (let room = Math.max(64, hint + (hint >> 2) + 64); ; room *= 4) {
    const out = new Uint32Array(room * 4);
    const r = vmaIterRead(prog, pid, out);
    if (r === 'full') continue;
    if (r < 0) return r;
    // A thread with a file table of its own lists the same areas again: one listing is the map.
    let count = r;
    for (let i = 1; i < r; i++) if (startOf(out, i) <= startOf(out, i - 1)) { count = i; break; }
    return { out, count };
  }
}

function learn(): Learnt | null {
  const prog = vmaIterLoad();
  if (typeof prog !== 'number') {
    unusable = prog === 'lib' ? 'the library is not built' : prog === 'btf' ? 'the kernel\'s BTF lacks the task_vma iterator' : `bpf(PROG_LOAD): errno ${prog.errno}`;
    return null;
  }
  mark('vmflags-bpf: program loaded');
  const probes = vmaIterProbes();
  let first: ReturnType<typeof readAll>;
  let smaps: VmFlagsTable;
  let again: ReturnType<typeof readAll>;
  try {
    first = readAll(prog, process.pid, 1024);
    smaps = readVmFlagMasks(process.pid, LEARNT);
    again = readAll(prog, process.pid, 1024);
  } finally {
    vmaIterUnprobe(probes);
  }
  const fail = (why: string): null => { unusable = why; return null; };
  if (typeof first === 'number' || typeof again === 'number') return fail(`reading tsnap's own areas: errno ${-(typeof first === 'number' ? first : again)}`);
  if (first.count !== again.count || first.out.some((w, i) => i < first.count * 4 && w !== again.out[i])) return fail('tsnap\'s own map changed while it was read');
  mark('vmflags-bpf: tsnap\'s own areas read');
  const { out, count } = first;
  // Both in address order: the iterator's areas are smaps's, but for the gate area after them.
  const shown = smaps.count;
  let gate: Learnt['gate'] = null;
  if (shown === count + 1 && smaps.starts[count] >= 2 ** 47) {
    const m = smaps.masks[count];
    gate = { start: smaps.starts[count], tokens: LEARNT.filter((_, t) => m & (1 << t)) };
  } else if (shown !== count) {
    return fail(`smaps shows ${shown} areas of tsnap's, the iterator ${count}`);
  }
  for (let i = 0; i < count; i++) {
    if (smaps.starts[i] !== startOf(out, i)) return fail(`smaps's area ${i} starts at ${smaps.starts[i].toString(16)}, the iterator's at ${startOf(out, i).toString(16)}`);
  }
  const bits = new Map<string, { lo: number; hi: number }>();
  for (let t = 0; t < LEARNT.length; t++) {
    const token = LEARNT[t];
    let lo = -1;
    let hi = -1;
    let seen = false;
    for (let i = 0; i < count; i++) {
      if (smaps.masks[i] & (1 << t)) { seen = true; lo &= out[4 * i + 2]; hi &= out[4 * i + 3]; } else { lo &= ~out[4 * i + 2]; hi &= ~out[4 * i + 3]; }
    }
    const ones = popcount(lo) + popcount(hi);
    if (!seen || ones !== 1) return fail(`VmFlags token ${token}: ${seen ? `${ones} vm_flags bits match it` : 'no probe area shows it'}`);
    bits.set(token, { lo: lo >>> 0, hi: hi >>> 0 });
  }
  mark('vmflags-bpf: bits learnt');
  return { prog, bits, gate };
}

function popcount(x: number): number {
  let n = 0;
  for (let v = x >>> 0; v; v &= v - 1) n++;
  return n;
}

/**
 * readVmFlagMasks(pid, tokens) through the iterator: the same table (every
 * area in address order, bit i = tokens[i]), or null when the iterator is
 * not usable here or cannot read `pid` (the caller reads smaps, which says
 * what is wrong with the process).
 */
export function readVmFlagMasksBpf(pid: number, tokens: readonly string[], areasHint = 64): VmFlagsTable | null {
  if (learnt === undefined) {
    // A probe refused, tsnap's own smaps unreadable: smaps of the target is still the answer.
    try { learnt = learn(); } catch (err) { unusable = `learning the bits: ${(err as Error).message}`; learnt = null; }
  }
  if (!learnt) return null;
  const lo = new Int32Array(tokens.length);
  const hi = new Int32Array(tokens.length);
  for (let t = 0; t < tokens.length; t++) {
    const b = learnt.bits.get(tokens[t]);
    if (!b) return null;
    lo[t] = b.lo;
    hi[t] = b.hi;
  }
  const got = readAll(learnt.prog, pid, areasHint);
  if (typeof got === 'number') return null;
  const { out, count } = got;
  const n = count + (learnt.gate ? 1 : 0);
  const starts = new Float64Array(n);
  const masks = new Int32Array(n);
  for (let i = 0; i < count; i++) {
    const flo = out[4 * i + 2];
    const fhi = out[4 * i + 3];
    let m = 0;
    for (let t = 0; t < lo.length; t++) if ((flo & lo[t]) | (fhi & hi[t])) m |= 1 << t;
    starts[i] = startOf(out, i);
    masks[i] = m;
  }
  if (learnt.gate) {
    let m = 0;
    tokens.forEach((t, i) => { if (learnt!.gate!.tokens.includes(t)) m |= 1 << i; });
    starts[count] = learnt.gate.start;
    masks[count] = m;
  }
  return { count: n, starts, masks };
}

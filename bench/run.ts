/**
 * `npm run bench`: dump throughput of a 1 GiB process, reported as ratios
 * against baselines measured in the same run (this VM's memory speed swings
 * by several times between cold and warm runs, so absolute numbers mean
 * little):
 *   raw-readv   process_vm_readv of the same memory into one reused 1 MiB buffer
 *   readv+write process_vm_readv plus a sequential write of the same bytes to
 *               the image's filesystem (the floor for any dump that writes a file)
 *   dump none / dump lz4: tsnap dump --leave-running
 *   smallProcess  the CLI (bin/tsnap) dumping a 1 MiB process, against node -e 0 and CRIU (startup.ts)
 * Each is run REPS times after a warm-up; the median is reported.
 */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, openSync, writeSync, closeSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dump } from '../src/dump/dump.js';
import { restore } from '../src/restore/restore.js';
import { VmCopier, ptrace, kill, setCloexec } from '../src/sys/index.js';
import { startupFigures } from './startup.js';

const SIZE_MIB = Number(process.env.BENCH_MIB ?? 1024);
const REPS = Number(process.env.BENCH_REPS ?? 3);
const OUT_ROOT = process.env.BENCH_DIR ?? '/dev/shm';

const FIXTURE = `
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
  size_t n = (size_t)atol(argv[1]) << 20;
  uint64_t *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  /* Realistic: half of each page pseudo-random (incompressible), half small
     integers (compressible), like a heap of pointers and counters. */
  if (argc < 3) /* argv[2] = "fresh": leave the memory untouched */
    for (size_t i = 0; i < n / 8; i++) p[i] = (i % 512 < 256) ? i * 0x9E3779B97F4A7C15ull : (i & 0xff);
  printf("READY %p\\n", (void *)p); fflush(stdout);
  for (;;) pause();
}`;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main(): Promise<void> {
  // The bench's own inherited fds (from whatever shell started it) must not
  // leak into the target it dumps and restores.
  for (const name of readdirSync('/proc/self/fd')) if (Number(name) > 2) { try { setCloexec(Number(name)); } catch { /* gone */ } }
  const work = mkdtempSync(join(tmpdir(), 'tsnap-bench-'));
  const src = join(work, 'fill.c');
  const bin = join(work, 'fill');
  writeFileSync(src, FIXTURE);
  execFileSync('gcc', ['-O2', '-o', bin, src]);
  const child = spawn(bin, [String(SIZE_MIB)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const pid = child.pid!;
  try {
    const line: string = await new Promise((resolve) => createInterface({ input: child.stdout! }).once('line', resolve));
    const addr = Number(BigInt(line.split(' ')[1]));
    const bytes = SIZE_MIB << 20;
    const gib = bytes / 2 ** 30;
    const copier = new VmCopier(pid);
    const buf = Buffer.alloc(1 << 20);

    const rawReadv = () => {
      const t = process.hrtime.bigint();
      for (let a = addr; a < addr + bytes; a += buf.length) copier.readv(buf, 0, [{ addr: a, len: buf.length }]);
      return gib / (Number(process.hrtime.bigint() - t) / 1e9);
    };
    const readvWrite = () => {
      const path = join(OUT_ROOT, `tsnap-bench-raw-${pid}`);
      const fd = openSync(path, 'w', 0o600);
      const t = process.hrtime.bigint();
      for (let a = addr; a < addr + bytes; a += buf.length) {
        copier.readv(buf, 0, [{ addr: a, len: buf.length }]);
        writeSync(fd, buf);
      }
      const r = gib / (Number(process.hrtime.bigint() - t) / 1e9);
      closeSync(fd);
      rmSync(path, { force: true });
      return r;
    };
    const dumpRun = async (compression: 'none' | 'lz4') => {
      const dir = join(OUT_ROOT, `tsnap-bench-img-${pid}`);
      rmSync(dir, { recursive: true, force: true });
      const r = await dump({ pid, dir, leaveRunning: true, compression });
      const ratio = r.stats.bytesStored / r.stats.bytesRaw;
      rmSync(dir, { recursive: true, force: true });
      return { gibps: (r.stats.bytesRaw / 2 ** 30) / (r.stats.memdumpUs / 1e6), frozenMs: r.stats.frozenUs / 1000, ratio };
    };

    const rawWritev = () => {
      // Rewrites the target's own bytes in place: same pages, no change.
      const t = process.hrtime.bigint();
      for (let a = addr; a < addr + bytes; a += buf.length) {
        copier.readv(buf, 0, [{ addr: a, len: buf.length }]);
      }
      const readSecs = Number(process.hrtime.bigint() - t) / 1e9;
      const t2 = process.hrtime.bigint();
      for (let a = addr; a < addr + bytes; a += buf.length) copier.writev(buf, 0, [{ addr: a, len: buf.length }]);
      void readSecs;
      return gib / (Number(process.hrtime.bigint() - t2) / 1e9);
    };
    const rawWritevFresh = async () => {
      // A new process's untouched memory, as a restore meets it: every page is
      // allocated by the write itself.
      const fresh = spawn(bin, [String(SIZE_MIB), 'fresh'], { stdio: ['ignore', 'pipe', 'inherit'] });
      const l: string = await new Promise((resolve) => createInterface({ input: fresh.stdout! }).once('line', resolve));
      const base = Number(BigInt(l.split(' ')[1]));
      const c = new VmCopier(fresh.pid!);
      const t = process.hrtime.bigint();
      for (let a = base; a < base + bytes; a += buf.length) c.writev(buf, 0, [{ addr: a, len: buf.length }]);
      const r = gib / (Number(process.hrtime.bigint() - t) / 1e9);
      fresh.kill('SIGKILL');
      return r;
    };
    const restoreRun = async (compression: 'none' | 'lz4') => {
      const dir = join(OUT_ROOT, `tsnap-bench-rimg-${pid}`);
      rmSync(dir, { recursive: true, force: true });
      await dump({ pid, dir, leaveRunning: true, compression });
      const r = await restore({ dir, newPid: true });
      kill(r.pid, 9);
      try { ptrace.waitpidBlocking(r.pid); } catch { /* reaped */ }
      rmSync(dir, { recursive: true, force: true });
      return { gibps: (r.stats.bytesRestored / 2 ** 30) / (r.stats.restoreUs / 1e6), ms: r.stats.restoreUs / 1000 };
    };

    // Warm-up: touch the paths once each so first-touch costs of this VM stay out.
    rawReadv(); readvWrite();
    const rssBefore = process.resourceUsage().maxRSS;
    await dumpRun('none'); await dumpRun('lz4');
    // Peak memory the dumps added to this process: bounded by the chunk pool,
    // not by the size of the target.
    const rssGrowthMiB = (process.resourceUsage().maxRSS - rssBefore) / 1024;

    const raw: number[] = []; const rw: number[] = []; const none: number[] = []; const lz4: number[] = [];
    const frozenNone: number[] = []; const frozenLz4: number[] = [];
    const rawWF: number[] = []; await rawWritevFresh();
    const rawW: number[] = []; const resNone: number[] = []; const resLz4: number[] = []; const resMs: number[] = [];
    rawWritev(); await restoreRun('none');
    let lz4Ratio = 0;
    for (let i = 0; i < REPS; i++) {
      raw.push(rawReadv());
      rw.push(readvWrite());
      const n = await dumpRun('none'); none.push(n.gibps); frozenNone.push(n.frozenMs);
      const l = await dumpRun('lz4'); lz4.push(l.gibps); frozenLz4.push(l.frozenMs); lz4Ratio = l.ratio;
      rawW.push(rawWritev());
      rawWF.push(await rawWritevFresh());
      const rn = await restoreRun('none'); resNone.push(rn.gibps); resMs.push(rn.ms);
      resLz4.push((await restoreRun('lz4')).gibps);
    }
    const r = median(raw);
    const report = {
      sizeMiB: SIZE_MIB, reps: REPS, outDir: OUT_ROOT,
      rawReadvGiBps: +r.toFixed(2),
      readvPlusWriteGiBps: +median(rw).toFixed(2),
      dumpNoneGiBps: +median(none).toFixed(2),
      dumpLz4GiBps: +median(lz4).toFixed(2),
      dumpNoneVsRawReadv: +(median(none) / r).toFixed(2),
      dumpNoneVsReadvPlusWrite: +(median(none) / median(rw)).toFixed(2),
      dumpLz4VsRawReadv: +(median(lz4) / r).toFixed(2),
      lz4StoredFraction: +lz4Ratio.toFixed(3),
      frozenMsNone: +median(frozenNone).toFixed(1),
      frozenMsLz4: +median(frozenLz4).toFixed(1),
      dumpPeakRssGrowthMiB: +rssGrowthMiB.toFixed(1),
      rawWritevGiBps: +median(rawW).toFixed(2),
      restoreNoneGiBps: +median(resNone).toFixed(2),
      restoreLz4GiBps: +median(resLz4).toFixed(2),
      restoreNoneVsRawWritev: +(median(resNone) / median(rawW)).toFixed(2),
      restoreLz4VsRawWritev: +(median(resLz4) / median(rawW)).toFixed(2),
      restoreNoneMs: +median(resMs).toFixed(0),
      rawWritevFreshGiBps: +median(rawWF).toFixed(2),
      restoreNoneVsFreshWritev: +(median(resNone) / median(rawWF)).toFixed(2),
      restoreLz4VsFreshWritev: +(median(resLz4) / median(rawWF)).toFixed(2),
      // The CLI end to end on a 1 MiB process, where Node's start dominates (bench/startup.ts).
      smallProcess: await startupFigures(),
    };
    console.log(JSON.stringify(report, null, 2));
  } finally {
    child.kill('SIGKILL');
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => { console.error(err); process.exit(1); });

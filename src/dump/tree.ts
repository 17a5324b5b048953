/**
 * `dump --tree` and `pre-dump --tree`: a process and all its descendants.
 *
 * For a dump every process is frozen before any is recorded: a parent is
 * frozen before its children are listed, so it cannot fork behind our back,
 * and the listing repeats until it finds no new process. Each process is
 * then imaged on its own (src/dump/dump.ts) into DIR/<pid>, with its fds
 * read across the whole tree so that pipes and files shared between the
 * processes are known as shared. The manifest (DIR/tree) is written last.
 *
 * A pre-dump freezes nothing: each process gets its own tracking, and a
 * later dump --parent uses DIR/<pid> of the parent tree for every process
 * that was already there.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { FrozenProcess } from '../freeze/frozen-process.js';
import { hold, unhold, type Releasable } from '../freeze/safety-net.js';
import { listChildren, readStat } from '../proc/index.js';
import { readTreeFds } from './fds.js';
import { tcpRepair } from '../files/tcp.js';
import { dump, preDump, checkMappings, type DumpOptions, type DumpResult } from './dump.js';
import { writeMetaFile } from '../image/metadata.js';
import { isTreeImage } from '../image/tree-manifest.js';
import { prepareImageDir, fsyncDir } from '../image/image-dir.js';
import { rmSync } from 'node:fs';
import { readImage } from '../image/image-reader.js';
import { stopHolder } from '../track/tracking.js';
import { TsnapError, asTsnapError } from '../errors.js';
import { FileKind, FORMAT_VERSION, type TreeManifest, type TreeMember } from '../../formats/schema.js';

export interface TreeDumpResult {
  dir: string;
  root: number;
  processes: { pid: number; result: DumpResult }[];
  killed: boolean;
  /** With `hold`: the tree, still frozen, for the caller to kill or release. */
  held: { kill(): void; release(): void } | null;
  /** When every process was frozen (hrtime), for downtime accounting. */
  frozenAt: bigint | null;
  frozenUs: number;
}

/** The tree under `root`, parents first, read from /proc (the processes may be running). */
export function listTree(root: number): TreeMember[] {
  const out: TreeMember[] = [{ pid: root, ppid: readStat(root).ppid, dir: String(root) }];
  for (let i = 0; i < out.length; i++) {
    for (const c of listChildren(out[i].pid)) out.push({ pid: c, ppid: out[i].pid, dir: String(c) });
  }
  return out;
}

class FrozenTree implements Releasable {
  readonly members: { m: TreeMember; fp: FrozenProcess }[] = [];
  /** Children that exited and wait to be reaped: recorded, not frozen. */
  readonly zombies: TreeMember[] = [];
  readonly frozenAt = process.hrtime.bigint();

  static freeze(root: number): FrozenTree {
    const tree = new FrozenTree();
    hold(tree);
    try {
      const queue: TreeMember[] = [{ pid: root, ppid: readStat(root).ppid, dir: String(root) }];
      const seen = new Set<number>([root]);
      while (queue.length) {
        const m = queue.shift()!;
        if (m.pid !== root) {
          const z = zombieOf(m);
          if (z) { tree.zombies.push(z); continue; }
        }
        let fp: FrozenProcess;
        try {
          fp = FrozenProcess.freeze(m.pid);
        } catch (err) {
          if (m.pid !== root) {
            // It exited just now: a zombie of its (frozen) parent, or reaped already.
            const z = zombieOf(m);
            if (z) { tree.zombies.push(z); continue; }
            if (err instanceof TsnapError && err.kind === 'noSuchProcess') continue;
          }
          throw err;
        }
        tree.members.push({ m, fp });
        // Frozen, it cannot fork: its children list is final.
        for (const c of listChildren(m.pid)) {
          if (seen.has(c)) continue;
          seen.add(c);
          queue.push({ pid: c, ppid: m.pid, dir: String(c) });
        }
      }
      if (readStat(root).state === 'Z') throw new TsnapError('noSuchProcess', `process ${root} has exited (a zombie waiting for its parent)`);
      // A child that exited while its siblings were being frozen.
      for (let i = tree.members.length - 1; i > 0; i--) {
        const z = zombieOf(tree.members[i].m);
        // (kill() of a dead process only collects our tracer's view of its exit.)
        if (z) { tree.members[i].fp.kill(); tree.members.splice(i, 1); tree.zombies.push(z); }
      }
      return tree;
    } catch (err) {
      tree.release();
      throw err;
    }
  }

  release(): void {
    unhold(this);
    // Children first: a parent resumed early could not observe them stopped anyway,
    // but this keeps the tree's own order of events natural.
    for (const { fp } of [...this.members].reverse()) {
      try { fp.release(); } catch { /* gone */ }
    }
  }

  kill(): void {
    unhold(this);
    for (const { fp } of [...this.members].reverse()) {
      try { fp.kill(); } catch { /* gone */ }
    }
  }
}

/** The member as a zombie, or null when it is alive. Its parent is frozen: it stays a zombie. */
function zombieOf(m: TreeMember): TreeMember | null {
  let st;
  try { st = readStat(m.pid); } catch { return null; }
  if (st.state !== 'Z') return null;
  return { pid: m.pid, ppid: m.ppid, dir: '', zombie: { status: st.exitCode, pgid: st.pgrp, sid: st.session } };
}

function parentFor(parentTree: string | undefined, pid: number): string | undefined {
  if (!parentTree) return undefined;
  const d = join(parentTree, String(pid));
  return existsSync(join(d, 'inventory')) ? d : undefined;
}

export async function dumpTree(opts: DumpOptions, mode: 'dump' | 'predump'): Promise<TreeDumpResult> {
  const root = opts.pid;
  if (opts.parent && !isTreeImage(opts.parent)) {
    throw new TsnapError('badImage', `${opts.parent} is not a tree image; --tree needs the parent of a --tree dump`);
  }
  const top = prepareImageDir(resolve(opts.dir));
  const done: { pid: number; result: DumpResult }[] = [];
  let tree: FrozenTree | null = null;
  const fsync = opts.fsync ?? (mode === 'dump' && !opts.leaveRunning);
  try {
    let members: TreeMember[];
    if (mode === 'dump') {
      // Fail fast, with the tree untouched, on fds tsnap cannot restore.
      const running = listTree(root).map((m) => m.pid).filter((pid) => { try { return readStat(pid).state !== 'Z'; } catch { return false; } });
      readTreeFds(running, { tcpEstablished: opts.tcpEstablished, enter: false });
      for (const pid of running) checkMappings(pid);
      tree = FrozenTree.freeze(root);
      members = [...tree.members.map((x) => x.m), ...tree.zombies];
      const fds = readTreeFds(tree.members.map((x) => x.m.pid), { tcpEstablished: opts.tcpEstablished, enter: true });
      // All at once: while one process's pages are being written out, the
      // next one's are read, which shortens the time the whole tree is frozen.
      const settled = await Promise.allSettled(tree.members.map(({ m, fp }) => dump({
        ...opts, hold: false, pid: m.pid, dir: join(top.path, m.dir), parent: parentFor(opts.parent, m.pid),
        frozen: { process: fp, fds: fds.get(m.pid)! }, fsync,
      })));
      settled.forEach((r, i) => { if (r.status === 'fulfilled') done.push({ pid: tree!.members[i].m.pid, result: r.value }); });
      const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
    } else {
      members = listTree(root);
      const alive: TreeMember[] = [];
      for (const m of members) {
        // Zombies have no memory to pre-dump; the final dump records them.
        try { if (readStat(m.pid).state === 'Z') continue; } catch { continue; }
        try {
          const result = await preDump({ ...opts, pid: m.pid, dir: join(top.path, m.dir), parent: parentFor(opts.parent, m.pid) });
          done.push({ pid: m.pid, result });
          alive.push(m);
        } catch (err) {
          // A process of a running tree may exit meanwhile; the next round goes without it.
          if (m.pid !== root && err instanceof TsnapError && err.kind === 'noSuchProcess') continue;
          throw err;
        }
      }
      members = alive;
    }
    const manifest: TreeManifest = {
      formatVersion: FORMAT_VERSION, createdAt: new Date().toISOString(), root, contents: mode,
      processes: members.map((m) => {
        const d = done.find((x) => x.pid === m.pid);
        return d ? { ...m, imageId: d.result.imageId } : m;
      }),
    };
    writeMetaFile(top.path, FileKind.Tree, manifest, fsync);
    if (fsync) fsyncDir(top.path);
    let frozenUs = 0;
    let killed = false;
    const frozenAt = tree?.frozenAt ?? null;
    let held: TreeDumpResult['held'] = null;
    if (tree && opts.hold) {
      frozenUs = Number(process.hrtime.bigint() - tree.frozenAt) / 1000;
      held = tree;
      tree = null;
    } else if (tree) {
      frozenUs = Number(process.hrtime.bigint() - tree.frozenAt) / 1000;
      if (opts.leaveRunning) { tcpRepair.release(); tree.release(); } else { tree.kill(); tcpRepair.forget(); killed = true; }
      tree = null;
    }
    return { dir: top.path, root, processes: done, killed, frozenAt, frozenUs, held };
  } catch (err) {
    tcpRepair.release();
    tree?.release();
    // Pre-dumps of this round may have started trackings: a failed round
    // must not leave their holders behind (a parent's tracking stays).
    for (const d of done) {
      try {
        const ref = readImage(d.result.dir, { indexOnly: true }).inventory.tracking;
        const parentDir = parentFor(opts.parent, d.pid);
        const parentRef = parentDir ? readImage(parentDir, { indexOnly: true }).inventory.tracking : null;
        if (ref && ref.holderPid !== parentRef?.holderPid) stopHolder(ref);
      } catch { /* nothing to stop */ }
    }
    for (const d of done) rmSync(d.result.dir, { recursive: true, force: true });
    if (top.created) rmSync(top.path, { recursive: true, force: true });
    throw asTsnapError(err, `${mode} of the tree of process ${root}`);
  }
}

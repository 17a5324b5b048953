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
 * All or nothing: the tree is one FrozenSet, and each process's image and
 * tracking round wait for the manifest. Once it is committed every process
 * ends together (killed, released or held); before that, any failure or
 * signal releases them all, undoes every round and removes every image.
 *
 * A pre-dump freezes nothing: each process gets its own tracking, and a
 * later dump --parent uses DIR/<pid> of the parent tree for every process
 * that was already there.
 */
import { existsSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { FrozenProcess } from '../freeze/frozen-process.js';
import { FrozenSet } from '../freeze/frozen-set.js';
import { collectBeforeWindow } from '../gc-before-window.js';
import { withAbortSignals, letSignalsIn } from '../freeze/safety-net.js';
import { pausePoint } from '../fault-points.js';
import { listChildren, readStat } from '../proc/index.js';
import { sharedFdTables } from '../files/fd-table.js';
import { readTreeFds } from './fds.js';
import { sharedStoredEarlier, sharedAnonObjects } from './shared-memory.js';
import { checkMappings, checkCwd, type DumpOptions, type DumpResult } from './dump.js';
import { DumpSession } from './session.js';
import { imageProcess } from './image-process.js';
import { checkOomScoreAdj } from './process-state.js';
import { checkCreds, refuseUnrestorableZombie } from './creds.js';
import { credsImage } from '../restore/creds-check.js';
import { readTaskCreds } from '../proc/creds.js';
import { writeMetaFile, readMetaFile } from '../image/metadata.js';
import { refuseIfEnded, isSameProcess, refuseOtherProcess, endedSinceFirstRound } from './target-identity.js';
import { isTreeImage } from '../image/tree-manifest.js';
import { prepareImageDir, fsyncDir } from '../image/image-dir.js';
import { TsnapError, asTsnapError, interrupted, retellInterrupted } from '../errors.js';
import { refuseUndumpable } from './target-check.js';
import { FileKind, FORMAT_VERSION, type TreeManifest, type TreeMember, type CredsImage, type Inventory } from '../../formats/schema.js';

export interface TreeDumpResult {
  dir: string;
  root: number;
  processes: { pid: number; result: DumpResult }[];
  killed: boolean;
  /** With `hold`: the tree, still frozen, for the caller to finish. */
  held: FrozenSet | null;
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

interface FrozenTree {
  members: { m: TreeMember; fp: FrozenProcess }[];
  /** Children that exited and wait to be reaped: recorded, not frozen. */
  zombies: TreeMember[];
}

/**
 * Freezes the tree under `root` into `set`: a parent before its children
 * are listed, so that it cannot fork behind our back. On any failure
 * everything frozen so far is released.
 */
function freezeTree(root: number, set: FrozenSet): FrozenTree {
  const tree: FrozenTree = { members: [], zombies: [] };
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
      set.add(fp);
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
      // (Dropping a dead process only collects our tracer's view of its exit.)
      if (z) { set.drop(tree.members[i].fp); tree.members.splice(i, 1); tree.zombies.push(z); }
    }
    return tree;
  } catch (err) {
    try { set.release(); } catch { /* gone */ }
    throw err;
  }
}

/** The member as a zombie, or null when it is alive. Its parent is frozen: it stays a zombie. */
function zombieOf(m: TreeMember): TreeMember | null {
  let st;
  try { st = readStat(m.pid); } catch { return null; }
  if (st.state !== 'Z') return null;
  // A zombie runs nothing: its credentials are in status, but not its securebits.
  let creds: CredsImage | undefined;
  try { creds = credsImage(readTaskCreds(m.pid, m.pid), 0); } catch { /* gone after all (its parent was not frozen yet): recorded without */ }
  if (creds) refuseUnrestorableZombie(m.pid, creds);
  return { pid: m.pid, ppid: m.ppid, dir: '', zombie: { status: st.exitCode, pgid: st.pgrp, sid: st.session, ...(creds ? { creds } : {}) } };
}

/**
 * The parent tree's image of `pid`, when it has one of this same process.
 * A member whose pid the parent tree gave to a process that has exited
 * since (the pid reused by a new child) has no parent: it starts anew. The
 * root's parent is compared by prepareImage, which refuses another process.
 */
function parentFor(parentTree: string | undefined, pid: number, root: number): string | undefined {
  if (!parentTree) return undefined;
  const d = join(parentTree, String(pid));
  if (!existsSync(join(d, 'inventory'))) return undefined;
  if (pid === root) return d;
  try {
    return isSameProcess(readMetaFile<Inventory>(d, FileKind.Inventory), pid) ? d : undefined;
  } catch {
    return d; // unreadable: the round's own read of it says why
  }
}

/** Only the root is the process a loop's pidfd (targetPidfd) is of. */
function memberTarget(opts: DumpOptions, pid: number): Pick<DumpOptions, 'targetPidfd' | 'targetGone'> {
  return pid === opts.pid ? { targetPidfd: opts.targetPidfd, targetGone: opts.targetGone } : { targetPidfd: undefined, targetGone: undefined };
}

/**
 * A session over the tree: every process frozen (dump) or running
 * (pre-dump), each imaged by the same step as a single process
 * (image-process.ts) into DIR/<pid>, the manifest as the commit record,
 * then the one finish for all.
 */
export async function dumpTree(opts: DumpOptions, mode: 'dump' | 'predump'): Promise<TreeDumpResult> {
  const root = opts.pid;
  if (opts.parent && !isTreeImage(opts.parent)) {
    throw new TsnapError('badImage', `${opts.parent} is not a tree image; --tree needs the parent of a --tree dump`);
  }
  const gone = opts.targetGone ?? (() => endedSinceFirstRound(root));
  refuseIfEnded(opts.targetPidfd, gone);
  refuseUndumpable(root);
  // The root's parent of another process (its pid reused): refused before the tree is frozen, not by the root's round after.
  const rootParent = opts.parent ? join(opts.parent, String(root)) : null;
  if (rootParent && existsSync(join(rootParent, 'inventory'))) refuseOtherProcess(rootParent, readMetaFile<Inventory>(rootParent, FileKind.Inventory), root);
  const done: { pid: number; result: DumpResult }[] = [];
  const session = new DumpSession();
  const fsync = opts.fsync ?? (mode === 'dump' && !opts.leaveRunning);
  try {
    // One scope from the first step to the last: a signal at any point,
    // the freeze included, unwinds everything below.
    return await withAbortSignals(async (checkAbort) => {
      const top = prepareImageDir(resolve(opts.dir));
      const topDir = top.path;
      session.onFailure(() => {
        rmSync(join(topDir, 'tree'), { force: true });
        if (top.created) rmSync(topDir, { recursive: true, force: true });
      });
      let members: TreeMember[];
      if (mode === 'dump') {
        // Fail fast, with the tree untouched, on fds tsnap cannot restore.
        const listed = listTree(root);
        const stateOf = (pid: number) => { try { return readStat(pid).state; } catch { return null; } };
        const isZombie = (pid: number) => stateOf(pid) === 'Z';
        const runningTree = listed.filter((m) => { const st = stateOf(m.pid); return st !== null && st !== 'Z'; });
        const running = runningTree.map((m) => m.pid);
        readTreeFds(running, { tcpEstablished: opts.tcpEstablished, tcpClose: opts.tcpClose, extUnixSk: opts.extUnixSk, ghostLimit: opts.ghostLimit, enter: false, zombies: listed.filter((m) => m.pid !== root && isZombie(m.pid)).map((m) => m.pid) });
        for (const pid of running) { checkMappings(pid, opts.ghostLimit); checkCwd(pid); checkOomScoreAdj(pid); checkCreds(pid); }
        sharedFdTables(runningTree);
        // A migration's held final round: V8 collects now rather than in the downtime (gc-before-window.ts), as dump.ts does for one process.
        if (opts.hold) collectBeforeWindow('the freeze');
        await opts.beforeFreeze?.();
        const t = freezeTree(root, session.set);
        // Frozen, the root's pid cannot change hands: it is the loop's process still, or a stranger.
        refuseIfEnded(opts.targetPidfd, gone);
        pausePoint('tree-frozen');
        await letSignalsIn();
        checkAbort();
        // Frozen: the sharing is final. A child that shares its parent's table is forked with CLONE_FILES.
        const shared = sharedFdTables(t.members.map((x) => x.m));
        for (const { m } of t.members) if (shared.has(m.pid)) m.filesShared = true;
        members = [...t.members.map((x) => x.m), ...t.zombies];
        const fds = readTreeFds(t.members.map((x) => x.m.pid), { tcpEstablished: opts.tcpEstablished, tcpClose: opts.tcpClose, extUnixSk: opts.extUnixSk, ghostLimit: opts.ghostLimit, enter: true, zombies: t.zombies.map((z) => z.pid), repair: session.repair });
        // All at once: while one process's pages are being written out, the
        // next one's are read, which shortens the time the whole tree is frozen.
        const sharedElsewhere = sharedStoredEarlier(t.members.map((x) => x.m.pid));
        const settled = await Promise.allSettled(t.members.map(({ m, fp }) => imageProcess(session.member(), {
          ...opts, ...memberTarget(opts, m.pid), hold: false, pid: m.pid, dir: join(topDir, m.dir), parent: parentFor(opts.parent, m.pid, root), fsync, sharedElsewhere: sharedElsewhere.get(m.pid),
        }, 'dump', checkAbort, { process: fp, fds: fds.get(m.pid)! })));
        settled.forEach((r, i) => { if (r.status === 'fulfilled') done.push({ pid: t.members[i].m.pid, result: r.value }); });
        const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
        if (failed) throw failed.reason;
      } else {
        members = listTree(root);
        const alive: TreeMember[] = [];
        // As in the dump: a shared object one member of this round stored is
        // not stored again by the next (postgres's buffer pool, sent whole
        // every round of a migration, once per process otherwise).
        const stored = new Set<string>();
        for (const m of members) {
          checkAbort();
          // Zombies have no memory to pre-dump; the final dump records them.
          try { if (readStat(m.pid).state === 'Z') continue; } catch { continue; }
          const scope = session.member();
          try {
            const mine = sharedAnonObjects(m.pid);
            const sharedElsewhere = new Set([...mine].filter((k) => stored.has(k)));
            const result = await imageProcess(scope, { ...opts, ...memberTarget(opts, m.pid), leaveRunning: true, fsync: false, pid: m.pid, dir: join(topDir, m.dir), parent: parentFor(opts.parent, m.pid, root), commitFile: join(topDir, 'tree'), sharedElsewhere }, 'predump', checkAbort, { process: null });
            for (const k of mine) stored.add(k);
            done.push({ pid: m.pid, result });
            alive.push(m);
          } catch (err) {
            // A process of a running tree may exit meanwhile; the next round goes without it.
            if (m.pid !== root && err instanceof TsnapError && err.kind === 'noSuchProcess') { await scope.unwind(); continue; }
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
      // The manifest is the tree's commit record: written last, made durable.
      pausePoint('tree-manifest');
      writeMetaFile(topDir, FileKind.Tree, manifest, fsync);
      if (fsync) fsyncDir(topDir);
      pausePoint('tree-committed');
      await letSignalsIn();
      checkAbort();

      // The point of no return, for every process at once; nothing from
      // here on awaits.
      session.commit();
      const set = session.set;
      for (const d of done) d.result.round?.commit(set);
      const frozenAt = set.frozenAt;
      const frozenUs = set.frozenUs();
      const how = mode === 'predump' ? 'release' : opts.hold ? 'hold' : opts.leaveRunning ? 'release' : 'kill';
      const held = session.finish(how);
      return { dir: topDir, root, processes: done, killed: mode === 'dump' && how === 'kill', frozenAt, frozenUs, held };
    }, (sig) => interrupted(sig, `interrupted by ${sig}; the ${mode} of the tree of process ${root} was abandoned and every process resumed unharmed`));
  } catch (err) {
    // The processes run on, then every member's round is undone (pages it
    // write-protected count as written again, trackings it started end)
    // and every image removed.
    await session.fail();
    const e = asTsnapError(err, `${mode} of the tree of process ${root}`);
    throw e.kind === 'interrupted'
      ? retellInterrupted(e, (sig) => `interrupted by ${sig}; the ${mode} of the tree of process ${root} was abandoned and every process resumed unharmed`)
      : e;
  }
}

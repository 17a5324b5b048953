/**
 * posix_spawn() through the FFI, for helpers on a restore's critical path.
 * Node's spawn() forks the whole tsnap process (page tables of a big heap
 * copied, ~10-15 ms per call on a busy machine here); glibc's posix_spawn
 * uses clone(CLONE_VM | CLONE_VFORK) and costs well under a millisecond.
 * The child gets `fds[i]` as its fd i (stdin, stdout, stderr...) and no
 * other fd (whatever tsnap inherited without O_CLOEXEC stays here), the
 * environment `env` (none when omitted), and its own session when `setsid`.
 */
import { SysError } from './errors.js';
import { libc } from './libc.js';

const spawnFn = libc.posixSpawn;
const faInit = libc.posixSpawnFileActionsInit;
const faDestroy = libc.posixSpawnFileActionsDestroy;
const faDup2 = libc.posixSpawnFileActionsAddDup2;
const faClosefrom = libc.posixSpawnFileActionsAddClosefrom;
const attrInit = libc.posixSpawnattrInit;
const attrDestroy = libc.posixSpawnattrDestroy;
const attrSetflags = libc.posixSpawnattrSetflags;
const attrSetschedpolicy = libc.posixSpawnattrSetschedpolicy;
const attrSetsigdefault = libc.posixSpawnattrSetsigdefault;
const attrSetschedparam = libc.posixSpawnattrSetschedparam;

const POSIX_SPAWN_SETSID = 0x80;
const POSIX_SPAWN_SETSCHEDULER = 0x20;
const POSIX_SPAWN_SETSIGDEF = 0x04;
/**
 * Every signal back to SIG_DFL in the child, glibc's own two (32, 33) too:
 * without it glibc sets the ones tsnap handles to SIG_IGN before the exec,
 * and an ignored signal stays ignored across it. A restored process starts
 * from the helper's actions, and only those the image does not leave at
 * SIG_DFL are set again.
 */
const ALL_SIGNALS = Buffer.alloc(128, 0xff);
const EPERM = 1;

/** A scheduling class the child takes before its exec (a plain policy: posix_spawn refuses SCHED_RESET_ON_FORK). */
export interface SpawnSched {
  policy: number;
  priority: number;
}
/** sizeof(posix_spawn_file_actions_t) = 80, sizeof(posix_spawnattr_t) = 336 on x86-64 glibc; generous. */
const FA_SIZE = 128;
const ATTR_SIZE = 512;

export function posixSpawn(path: string, args: string[], fds: number[], setsid: boolean, env: NodeJS.ProcessEnv | null = null): number {
  const { fa, attr, argv, envp } = prepare(path, args, fds, setsid, env);
  try {
    const pid = [0];
    const r = spawnFn(pid, path, fa, attr, argv, envp);
    if (r !== 0) throw new SysError(`posix_spawn(${path})`, r);
    return pid[0];
  } finally {
    faDestroy(fa);
    attrDestroy(attr);
  }
}

/**
 * posixSpawn() on libuv's pool: CLONE_VFORK holds the calling thread until
 * the child has exec'd, which on a loaded machine is a wait for the
 * scheduler (3-30 ms here); this thread goes on meanwhile. `fds` must stay
 * open until the promise settles. TSNAP_SPAWN_ASYNC=0: on this thread
 * (bench's baseline in the same run).
 */
export function posixSpawnAsync(path: string, args: string[], fds: number[], setsid: boolean, sched?: SpawnSched): Promise<number> {
  if (process.env.TSNAP_SPAWN_ASYNC === '0') {
    try {
      return Promise.resolve(posixSpawn(path, args, fds, setsid));
    } catch (err) {
      return Promise.reject(err);
    }
  }
  const { fa, attr, argv, envp } = prepare(path, args, fds, setsid, null, sched);
  const pid = [0];
  return new Promise<number>((resolve, reject) => {
    spawnFn.async(pid, path, fa, attr, argv, envp, (err: unknown, r: number) => {
      faDestroy(fa);
      attrDestroy(attr);
      if (err) reject(err);
      else if (r !== 0) reject(new SysError(`posix_spawn(${path})`, r));
      else resolve(pid[0]);
    });
  }).catch((err: unknown) => {
    // The class is best effort: refused (no CAP_SYS_NICE), the child starts in the caller's.
    if (sched && err instanceof SysError && err.errno === EPERM) return posixSpawnAsync(path, args, fds, setsid);
    throw err;
  });
}

function prepare(path: string, args: string[], fds: number[], setsid: boolean, env: NodeJS.ProcessEnv | null, sched?: SpawnSched): { fa: Buffer; attr: Buffer; argv: (string | null)[]; envp: (string | null)[] } {
  const fa = Buffer.alloc(FA_SIZE);
  const attr = Buffer.alloc(ATTR_SIZE);
  faInit(fa);
  attrInit(attr);
  try {
    fds.forEach((fd, i) => {
      const r = faDup2(fa, fd, i);
      if (r !== 0) throw new SysError('posix_spawn_file_actions_adddup2', r);
    });
    const c = faClosefrom(fa, fds.length);
    if (c !== 0) throw new SysError('posix_spawn_file_actions_addclosefrom_np', c);
    if (sched) {
      const param = Buffer.alloc(4);
      param.writeInt32LE(sched.priority, 0);
      const r = attrSetschedpolicy(attr, sched.policy) || attrSetschedparam(attr, param);
      if (r !== 0) throw new SysError('posix_spawnattr_setschedpolicy', r);
    }
    const d = attrSetsigdefault(attr, ALL_SIGNALS);
    if (d !== 0) throw new SysError('posix_spawnattr_setsigdefault', d);
    attrSetflags(attr, POSIX_SPAWN_SETSIGDEF | (setsid ? POSIX_SPAWN_SETSID : 0) | (sched ? POSIX_SPAWN_SETSCHEDULER : 0));
  } catch (err) {
    faDestroy(fa);
    attrDestroy(attr);
    throw err;
  }
  const envs = env ? Object.entries(env).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${v}`) : [];
  return { fa, attr, argv: [path, ...args, null], envp: [...envs, null] };
}

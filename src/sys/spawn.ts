/**
 * posix_spawn() through the FFI, for helpers on a restore's critical path.
 * Node's spawn() forks the whole tsnap process (page tables of a big heap
 * copied, ~10-15 ms per call on a busy machine here); glibc's posix_spawn
 * uses clone(CLONE_VM | CLONE_VFORK) and costs well under a millisecond.
 * The child gets `fds[i]` as its fd i (stdin, stdout, stderr...), an empty
 * environment, and its own session when `setsid`.
 */
import koffi from 'koffi';
import { SysError } from './errors.js';

const lib = koffi.load('libc.so.6');
const spawnFn = lib.func('int posix_spawn(_Out_ int *pid, const char *path, void *fa, void *attr, const char **argv, const char **envp)');
const faInit = lib.func('int posix_spawn_file_actions_init(void *fa)');
const faDestroy = lib.func('int posix_spawn_file_actions_destroy(void *fa)');
const faDup2 = lib.func('int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)');
const attrInit = lib.func('int posix_spawnattr_init(void *attr)');
const attrDestroy = lib.func('int posix_spawnattr_destroy(void *attr)');
const attrSetflags = lib.func('int posix_spawnattr_setflags(void *attr, short flags)');

const POSIX_SPAWN_SETSID = 0x80;
/** sizeof(posix_spawn_file_actions_t) = 80, sizeof(posix_spawnattr_t) = 336 on x86-64 glibc; generous. */
const FA_SIZE = 128;
const ATTR_SIZE = 512;

export function posixSpawn(path: string, args: string[], fds: number[], setsid: boolean): number {
  const fa = Buffer.alloc(FA_SIZE);
  const attr = Buffer.alloc(ATTR_SIZE);
  faInit(fa);
  attrInit(attr);
  try {
    fds.forEach((fd, i) => {
      const r = faDup2(fa, fd, i);
      if (r !== 0) throw new SysError('posix_spawn_file_actions_adddup2', r);
    });
    if (setsid) attrSetflags(attr, POSIX_SPAWN_SETSID);
    const pid = [0];
    const r = spawnFn(pid, path, fa, attr, [path, ...args, null], [null]);
    if (r !== 0) throw new SysError(`posix_spawn(${path})`, r);
    return pid[0];
  } finally {
    faDestroy(fa);
    attrDestroy(attr);
  }
}

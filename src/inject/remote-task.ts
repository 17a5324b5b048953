/**
 * A task under construction: remote syscalls plus a scratch area for their
 * buffers. During restore the scratch lives in the stub page tsnap maps into
 * the new task (removed as the very last step).
 */
import { ProcMem, SYS, AT_FDCWD, O_CLOEXEC } from '../sys/index.js';
import type { RemoteSyscaller } from './remote-syscall.js';
import type { BatchArea } from './remote-batch.js';

export class RemoteTask {
  scratch = 0;
  scratchSize = 0;
  /** The stub's runner of syscall lists (remote-batch.ts); null: one remote syscall per call. */
  batchArea: BatchArea | null = null;

  constructor(readonly sc: RemoteSyscaller, readonly mem: ProcMem) {}

  get pid(): number {
    return this.sc.task.pid;
  }

  /** Copies `data` into the scratch area at `offset`; returns its remote address. */
  put(data: Buffer, offset = 0): number {
    if (offset + data.length > this.scratchSize) throw new RangeError(`scratch overflow (${data.length} bytes)`);
    this.mem.write(data, 0, data.length, this.scratch + offset);
    return this.scratch + offset;
  }

  get(len: number, offset = 0): Buffer {
    const b = Buffer.alloc(len);
    this.mem.read(b, 0, len, this.scratch + offset);
    return b;
  }

  /** openat(AT_FDCWD, path, flags) inside the task. */
  open(path: string, flags: number, mode = 0): number {
    const addr = this.put(Buffer.from(`${path}\0`));
    return Number(this.sc.check(`open(${path})`, SYS.openat, BigInt(AT_FDCWD), addr, flags | O_CLOEXEC, mode));
  }

  close(fd: number): void {
    this.sc.check(`close(${fd})`, SYS.close, fd);
  }
}

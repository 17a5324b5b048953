/**
 * The CLI's own writes to fds 1 and 2, made with write(2), not through
 * process.stdout and process.stderr: the first use of those getters builds
 * a stream for each (a pipe's is a net.Socket, and node:net, the streams
 * and their handles load with it), ~15 ms of CPU at a small dump's start on
 * a loaded machine, for two lines of text. On Linux Node's own stdio writes
 * are synchronous too (files, pipes, terminals), so output written either
 * way keeps its order.
 *
 * A reader that stopped reading (tsnap show --json | head) is not a
 * failure: after EPIPE the rest of that fd's output is dropped, as main.ts
 * does for the streams. An fd left non-blocking by whoever shares it is
 * waited on, not failed.
 */
import { fstatSync, writeSync } from 'node:fs';

const closed = new Set<number>();
let nap: Int32Array | undefined;

export function writeFd(fd: 1 | 2, text: string): void {
  if (closed.has(fd) || text.length === 0) return;
  let buf = Buffer.from(text);
  for (let tries = 0; buf.length > 0;) {
    try {
      buf = buf.subarray(writeSync(fd, buf));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN' && ++tries < 5000) { Atomics.wait(nap ??= new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1); continue; }
      if (code === 'EPIPE' || code === 'EBADF') { closed.add(fd); return; }
      throw err;
    }
  }
}

/**
 * Whether `fd` is a terminal, without node:tty (which loads node:net):
 * a character device of a terminal driver's major number (Documentation/
 * admin-guide/devices.txt: 4 virtual consoles and serial ports, 5 /dev/tty,
 * the console and ptmx, 136-143 pseudo-terminals, 188 USB serial, 204 and
 * 207-208 other serial). /dev/null (major 1) is not one.
 */
export function isTerminal(fd: number): boolean {
  try {
    const st = fstatSync(fd);
    if (!st.isCharacterDevice()) return false;
    const major = Math.floor(st.rdev / 256) & 0xfff;
    return major === 4 || major === 5 || (major >= 136 && major <= 143) || major === 188 || major === 204 || major === 207 || major === 208;
  } catch {
    return false;
  }
}

/** What Output writes its stderr lines to: fd 2 by default, a stream in tests. */
export interface LineSink {
  write(text: string): unknown;
  readonly isTTY?: boolean;
}

export const stderrSink: LineSink = {
  write: (text: string) => writeFd(2, text),
  get isTTY() { return isTerminal(2); },
};

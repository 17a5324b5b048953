import { constants } from 'node:os';

/** errno number -> symbolic name, from Node's own table (Linux values). */
const errnoNames = new Map<number, string>();
for (const [name, num] of Object.entries(constants.errno)) {
  if (!errnoNames.has(num)) errnoNames.set(num, name);
}
errnoNames.set(11, 'EAGAIN');

export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

export const Errno = constants.errno;

/**
 * A failed system call. `call` names the call and its interesting arguments so
 * that an error read in a log says what was attempted, not just that it failed.
 */
export class SysError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly call: string;
  constructor(call: string, errno: number, detail?: string) {
    const code = errnoName(errno);
    super(`${call}: ${code}${detail ? ` (${detail})` : ''}`);
    this.name = 'SysError';
    this.errno = errno;
    this.code = code;
    this.call = call;
  }
}

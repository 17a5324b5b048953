/** The FFI layer: everything tsnap asks of the kernel goes through here. */
export * from './errors.js';
export * from './uapi.js';
export * as ptrace from './ptrace.js';
export { WaitStatus } from './ptrace.js';
export * from './memory.js';
export * from './fd.js';
export * from './pagemap-scan.js';
export * from './files.js';
export * from './sysv-shm.js';
export { Guardian, GuardianError, GuardianUnavailable, GuardianFailure, GUARDIAN_MAX_BATCH, guardianPath, type SyscallUndo } from './guardian.js';
export * from './sock-diag.js';
export * from './socket-calls.js';
export * from './tty.js';
export * from './userfault.js';
export * from './uffd-msg.js';
export * from './spawn.js';
export * from './splice.js';
export * from './random-id.js';

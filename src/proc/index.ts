/**
 * /proc/PID parsers, one file per module. parse* functions take text so they
 * can be tested on synthetic input; read* functions throw SysError, where
 * ENOENT means the process (or fd, or task) is gone.
 */
export * from './maps.js';
export * from './smaps.js';
export * from './stat.js';
export * from './status.js';
export * from './auxv.js';
export * from './fds.js';
export * from './task.js';
export * from './links.js';
export * from './limits.js';
export * from './timers.js';
export * from './creds.js';
export * from './sysvipc.js';
export * from './schedstat.js';

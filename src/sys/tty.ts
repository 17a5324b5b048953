/**
 * Terminal ioctls tsnap makes on its own copies of a process's ttys
 * (pidfd_getfd) and termios layout (x86-64 uapi: asm-generic/termbits.h,
 * asm-generic/ioctls.h). A mode ioctl on a pty master acts on its slave
 * (tty_mode_ioctl uses tty->link): termios, window size, session and
 * foreground group of the pair are all read and set through the master.
 */
import { libc } from './libc.js';
import { rawSyscall } from './fd.js';
import { SysError } from './errors.js';
import { SYS } from './uapi.js';

export const TTY_IOC = {
  TCGETS2: 0x802c542a,
  TCSETS2: 0x402c542b,
  TIOCGLCKTRMIOS: 0x5456,
  TIOCSLCKTRMIOS: 0x5457,
  TIOCGWINSZ: 0x5413,
  TIOCSWINSZ: 0x5414,
  TIOCSCTTY: 0x540e,
  TIOCGPGRP: 0x540f,
  TIOCSPGRP: 0x5410,
  TIOCEXCL: 0x540c,
  TIOCGEXCL: 0x80045440,
  FIONREAD: 0x541b,
  TIOCPKT: 0x5420,
  TIOCGPKT: 0x80045438,
  TIOCGSID: 0x5429,
  TIOCGPTN: 0x80045430,
  TIOCSPTLCK: 0x40045431,
  TIOCGPTLCK: 0x80045439,
  TIOCGPTPEER: 0x5441,
} as const;

/** struct termios2 (TCGETS2): 4 flag words, c_line, c_cc[19], ispeed, ospeed. */
export const TERMIOS2_SIZE = 44;
/** struct termios (the locked-termios ioctls): termios2 without the speeds. */
export const TERMIOS_SIZE = 36;
export const WINSIZE_SIZE = 8;

/** Offsets in struct termios(2), and the flag bits tsnap changes for a while. */
export const TERMIOS = {
  IFLAG: 0, OFLAG: 4, CFLAG: 8, LFLAG: 12, CC: 17,
  VTIME: 5, VMIN: 6,
  // c_iflag
  INLCR: 0o100, IGNCR: 0o200, ICRNL: 0o400, IUCLC: 0o1000, ISTRIP: 0o40,
  // c_oflag
  OPOST: 0o1,
  // c_lflag
  ISIG: 0o1, ICANON: 0o2, ECHO: 0o10, ECHOE: 0o20, ECHOK: 0o40, ECHONL: 0o100, ECHOCTL: 0o1000, ECHOPRT: 0o2000, ECHOKE: 0o4000, IEXTEN: 0o100000,
} as const;

/** An ioctl that fills a buffer of `size` bytes. */
export function ioctlGet(fd: number, request: number, size: number, name: string): Buffer {
  const b = Buffer.alloc(size);
  if (libc.ioctl(fd, request, b) === -1) throw new SysError(name, libc.errno());
  return b;
}

/** An ioctl that reads a buffer. */
export function ioctlSet(fd: number, request: number, b: Buffer, name: string): void {
  if (libc.ioctl(fd, request, b) === -1) throw new SysError(name, libc.errno());
}

/** An ioctl whose argument is a plain integer (TIOCSCTTY, TIOCGPTPEER, TIOCEXCL). */
export function ioctlArg(fd: number, request: number, arg: number, name: string): number {
  return rawSyscall(name, SYS.ioctl, fd, request, arg);
}

/**
 * Socket calls on tsnap's own copies of sockets (or its own sockets) that
 * need buffers: classic BPF filters, poll, sendto with an address.
 */
import { libc } from './libc.js';
import { rawSyscall } from './fd.js';
import { SYS } from './uapi.js';

const SOL_SOCKET = 1;
/** SO_GET_FILTER is SO_ATTACH_FILTER's number. */
const SO_ATTACH_FILTER = 26;
const INSN = 8;
const BPF_MAXINSNS = 4096;
const SYS_POLL = 7;

/**
 * The classic BPF program attached to socket `fd` (8 bytes an instruction),
 * or null. EACCES: the filter is eBPF (SO_ATTACH_BPF), which keeps no
 * classic program to give back.
 */
export function getSocketFilter(fd: number): Buffer | null {
  const len = Buffer.alloc(4);
  rawSyscall('getsockopt(SO_GET_FILTER)', SYS.getsockopt, fd, SOL_SOCKET, SO_ATTACH_FILTER, 0, libc.address(len));
  const n = len.readUInt32LE(0);
  if (n === 0) return null;
  const insns = Buffer.alloc(Math.min(n, BPF_MAXINSNS) * INSN);
  len.writeUInt32LE(insns.length / INSN);
  rawSyscall('getsockopt(SO_GET_FILTER)', SYS.getsockopt, fd, SOL_SOCKET, SO_ATTACH_FILTER, libc.address(insns), libc.address(len));
  return Buffer.from(insns.subarray(0, len.readUInt32LE(0) * INSN));
}

/** SO_ATTACH_FILTER of a classic program (8 bytes an instruction). */
export function attachSocketFilter(fd: number, insns: Buffer): void {
  const prog = Buffer.alloc(16); // struct sock_fprog: u16 len, pointer to the instructions
  const copy = Buffer.from(insns);
  prog.writeUInt16LE(copy.length / INSN, 0);
  prog.writeBigUInt64LE(libc.address(copy), 8);
  rawSyscall('setsockopt(SO_ATTACH_FILTER)', SYS.setsockopt, fd, SOL_SOCKET, SO_ATTACH_FILTER, libc.address(prog), prog.length);
}

/** poll() with no wait: the events `fd` reports now (POLLERR 8, POLLHUP 16, ...). Nothing is consumed. */
export function pollNow(fd: number, events = 0): number {
  const pfd = Buffer.alloc(8);
  pfd.writeInt32LE(fd, 0);
  pfd.writeInt16LE(events, 4);
  rawSyscall('poll', SYS_POLL, libc.address(pfd), 1, 0);
  return pfd.readInt16LE(6);
}

/** sendto() of one message to a raw sockaddr. */
export function sendToAddr(fd: number, data: Buffer, addr: Buffer, flags = 0): number {
  return rawSyscall('sendto', SYS.sendto, fd, libc.address(data), data.length, flags, libc.address(addr), addr.length);
}

/** send() that never blocks (MSG_DONTWAIT): the fd's own O_NONBLOCK, shared with its other copies, is left alone. */
export function sendNoWait(fd: number, data: Buffer): number {
  return rawSyscall('send', SYS.sendto, fd, libc.address(data), data.length, 0x40 /* MSG_DONTWAIT */, 0, 0);
}

import { PAGE_SIZE } from '../sys/uapi.js';
/**
 * The demo's sample workload: 32 MiB of state that it keeps writing and
 * checking. Every page starts with its own offset; each tick stamps the
 * tick number into 64 pages and checks 32 pages at random. Prints
 * `tick N ok` (or `tick N CORRUPT at OFFSET`) every 200 ms.
 */
const SIZE = 32 << 20;
const PAGES = SIZE / PAGE_SIZE;
const state = Buffer.alloc(SIZE);
for (let off = 0; off < SIZE; off += PAGE_SIZE) state.writeUInt32LE(off, off);
let tick = 0;
setInterval(() => {
  tick++;
  for (let k = 0; k < 64; k++) state.writeUInt32LE(tick, ((tick * 64 + k) % PAGES) * PAGE_SIZE + 4);
  let bad = -1;
  for (let k = 0; k < 32; k++) {
    const off = Math.floor(Math.random() * PAGES) * PAGE_SIZE;
    if (state.readUInt32LE(off) !== off) bad = off;
  }
  process.stdout.write(bad < 0 ? `tick ${tick} ok\n` : `tick ${tick} CORRUPT at ${bad}\n`);
}, 200);

/**
 * The order in which a chain's pages are written: by address, in windows
 * of about `windowBytes`, each window written with one gathered
 * process_vm_writev from every chunk it needs, of whatever level. Pure
 * logic (what to read, when each chunk can be let go); the page writer
 * (page-filler.ts) does the I/O.
 */
import { asResolvedTable, type ResolvedRun, type ResolvedTable } from '../image/chain-index.js';
import { PAGE_SIZE } from '../sys/uapi.js';

export interface AddressPlan {
  /** Chunks (image * 2^32 + chunk) in the order the windows first need them. */
  keys: number[];
  /** Per chunk (index in `keys`): the first and the last window that use it. */
  firstWindow: Int32Array;
  lastWindow: Int32Array;
  /** Per resolved run: its chunk's index in `keys`, and its window. */
  chunkOf: Int32Array;
  windowOf: Int32Array;
  /** Window w writes resolved runs windowStart[w] .. windowStart[w + 1] - 1. */
  windowStart: Int32Array;
  windows: number;
  /** The most chunks held at once: those a window uses and those later windows still need. */
  maxLive: number;
  /** Bytes the runs write. */
  bytes: number;
}

/** `resolved`: sorted by address (resolveChain); `chunksPerImage[i]`: how many chunks image i of the chain has. */
export function planByAddress(runs: readonly ResolvedRun[] | ResolvedTable, windowBytes: number, chunksPerImage: readonly number[]): AddressPlan {
  const { length: n, pages, image, chunk } = asResolvedTable(runs);
  const chunkOf = new Int32Array(n);
  const windowOf = new Int32Array(n);
  const starts: number[] = [0];
  // Each image's chunk -> its index in `keys` (-1: not yet needed): arrays, no hashing per run.
  const index = chunksPerImage.map((k) => new Int32Array(k).fill(-1));
  const keys: number[] = [];
  const first: number[] = [];
  const last: number[] = [];
  let w = 0;
  let bytes = 0;
  let total = 0;
  for (let i = 0; i < n; i++) {
    if (bytes >= windowBytes) {
      w++;
      starts.push(i);
      bytes = 0;
    }
    bytes += pages[i] * PAGE_SIZE;
    total += pages[i] * PAGE_SIZE;
    const at = index[image[i]];
    let c = at[chunk[i]];
    if (c < 0) {
      c = keys.length;
      at[chunk[i]] = c;
      keys.push(image[i] * 0x100000000 + chunk[i]);
      first.push(w);
      last.push(w);
    } else {
      last[c] = w;
    }
    chunkOf[i] = c;
    windowOf[i] = w;
  }
  const windows = n === 0 ? 0 : w + 1;
  starts.push(n);
  // Chunks held during window w: first <= w <= last.
  const delta = new Int32Array(windows + 1);
  for (let c = 0; c < keys.length; c++) {
    delta[first[c]]++;
    delta[last[c] + 1]--;
  }
  let live = 0;
  let maxLive = 0;
  for (let i = 0; i < windows; i++) {
    live += delta[i];
    if (live > maxLive) maxLive = live;
  }
  return {
    keys,
    firstWindow: Int32Array.from(first),
    lastWindow: Int32Array.from(last),
    chunkOf,
    windowOf,
    windowStart: Int32Array.from(windows === 0 ? [0] : starts),
    windows,
    maxLive,
    bytes: total,
  };
}

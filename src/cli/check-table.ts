/** `tsnap check` as a table: feature, result, what was found, what a failure disables. */
import type { CheckResult } from '../check/check.js';

export function formatCheck(r: CheckResult): string {
  const fw = Math.max(...r.items.map((i) => i.feature.length));
  const lines = r.items.flatMap((i) => {
    const line = `${i.feature.padEnd(fw)}  ${(i.ok ? 'ok' : i.required ? 'MISSING' : 'missing').padEnd(7)}  ${i.detail}`;
    return i.ok ? [line] : [line, `${''.padEnd(fw)}  -> disables ${i.disables}`];
  });
  const verdict = r.ok
    ? (r.items.every((i) => i.ok) ? 'everything tsnap uses works here' : 'dump and restore work here; the features marked missing are disabled')
    : 'tsnap cannot work here: see MISSING above';
  return `tsnap check on Linux ${r.kernel}\n${lines.map((l) => `  ${l}`).join('\n')}\n${verdict}\n`;
}

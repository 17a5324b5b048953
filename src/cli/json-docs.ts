/**
 * The documents `--json` prints, typed after formats/json/*.schema.json
 * (formats/cli-json-v1.md). A field added here must be added to its schema:
 * test/cli.test.ts validates real runs against them.
 */
import type { DumpStats } from '../../formats/schema.js';
import type { RestoreStats } from '../restore/restore.js';
import type { CheckItem } from '../check/check.js';
import type { VerifiedImage } from '../image/verify.js';
import type { MigrateResult } from '../migrate/sender.js';

type Kind = 'full' | 'delta';
type DumpCommand = 'dump' | 'pre-dump';

/** dump.schema.json: one process. */
export interface DumpDoc {
  command: DumpCommand;
  pid: number;
  dir: string;
  imageId: string;
  kind: Kind;
  killed: boolean;
  trackingLost: string | null;
  stats: DumpStats;
}

/** dump.schema.json: --tree. */
export interface TreeDumpDoc {
  command: DumpCommand;
  tree: true;
  dir: string;
  root: number;
  killed: boolean;
  frozenUs: number;
  processes: { pid: number; dir: string; kind: Kind; trackingLost: string | null; stats: DumpStats }[];
}

/** dump.schema.json: dump --pre-dumps N. */
export interface PreDumpsDoc {
  command: 'dump';
  final: string;
  stoppedBecause: string;
  rounds: { dir: string; kind: Kind; stats: DumpStats }[];
}

/** dump.schema.json: dump --tree --pre-dumps N. */
export interface TreePreDumpsDoc {
  command: 'dump';
  tree: true;
  final: string;
  stoppedBecause: string;
  rounds: { dir: string; processes: { pid: number; kind: Kind; stats: DumpStats }[] }[];
}

/** restore.schema.json. */
export interface RestoreDoc {
  command: 'restore';
  pid: number;
  originalPid: number;
  pids: { original: number; pid: number }[];
  stats: RestoreStats;
  warnings: string[];
}

/** verify.schema.json: printed only when intact. */
export interface VerifyDoc {
  command: 'verify';
  ok: true;
  dir: string;
  tree: boolean;
  processes: { pid: number; chain: VerifiedImage[] }[];
}

/** check.schema.json. */
export interface CheckDoc {
  command: 'check';
  kernel: string;
  ok: boolean;
  items: CheckItem[];
}

/** migrate.schema.json: the last stdout line. */
export interface MigrateDoneDoc extends MigrateResult {
  command: 'migrate';
  event: 'done';
}

export type JsonDoc = DumpDoc | TreeDumpDoc | PreDumpsDoc | TreePreDumpsDoc | RestoreDoc | VerifyDoc | CheckDoc | MigrateDoneDoc;

/** One document, one line. */
export function jsonLine(doc: JsonDoc): string {
  return `${JSON.stringify(doc)}\n`;
}

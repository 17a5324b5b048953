/** Runs in every test worker before its test file (vitest setupFiles). */
import { claimWorker } from './processes.js';

claimWorker();

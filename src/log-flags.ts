/**
 * The flags that bound what Moat's logs may write, shared by `moat serve`
 * and `moat proxy` (both have a main log and a --decision-log):
 * the global budget of each log (src/log-budget.ts) and the rotation of the
 * decision log file (src/rotating-file.ts). Described once here; the flag
 * tables of both commands and their --help include them.
 */
import { DEFAULT_LOG_BUDGET, type LogBudgetLimits } from './log-budget.js';
import { integerFlagDocs, parseIntegerFlags, type IntegerFlagSpec } from './limits.js';
import type { RotationOptions } from './rotating-file.js';

export interface LogLimits {
  /** The budget of each of the main log and the decision log (each has its own buckets). */
  budget: LogBudgetLimits;
  /** Rotation of the --decision-log file (maxBytes 0: none). */
  decisionLogRotation: RotationOptions;
}

type LogLimitKey = keyof LogBudgetLimits | 'decisionLogMaxBytes' | 'decisionLogKeep';

const KiB = 1024;
const GiB = 1024 * 1024 * 1024;
/** A rotation bound below this would rotate every few lines. */
const MIN_ROTATE_BYTES = 4 * KiB;

export const LOG_FLAG_SPECS: readonly IntegerFlagSpec<LogLimitKey>[] = [
  {
    flag: 'log-lines-per-sec',
    key: 'linesPerSec',
    default: DEFAULT_LOG_BUDGET.linesPerSec,
    min: 1,
    max: 1_000_000,
    help: 'Lines per second each of the main log and the decision log may write, after a burst of --log-line-burst; lines beyond are not written, and one "log lines suppressed" line per 10 s counts them per reason. /stats: logs.',
  },
  { flag: 'log-line-burst', key: 'lineBurst', default: DEFAULT_LOG_BUDGET.lineBurst, min: 1, max: 10_000_000, help: 'Lines each log may write at once before --log-lines-per-sec applies.' },
  {
    flag: 'log-bytes-per-sec',
    key: 'bytesPerSec',
    default: DEFAULT_LOG_BUDGET.bytesPerSec,
    min: 256,
    max: GiB,
    help: 'Bytes per second each log may write, after a burst of --log-byte-burst (with the defaults, a flood grows the two logs by at most ~1.5 MB a minute).',
  },
  { flag: 'log-byte-burst', key: 'byteBurst', default: DEFAULT_LOG_BUDGET.byteBurst, min: 4 * KiB, max: GiB, help: 'Bytes each log may write at once before --log-bytes-per-sec applies.' },
  {
    flag: 'decision-log-max-bytes',
    key: 'decisionLogMaxBytes',
    default: 0,
    min: 0,
    max: 1024 * GiB,
    help: `Rotate the --decision-log file before it passes N bytes: FILE becomes FILE.1 (FILE.1 FILE.2, ...), the oldest beyond --decision-log-keep is removed. 0: never rotate; otherwise at least ${MIN_ROTATE_BYTES}.`,
  },
  { flag: 'decision-log-keep', key: 'decisionLogKeep', default: 3, min: 1, max: 1000, help: 'Rotated decision log files kept (FILE.1 ... FILE.N).' },
];

/** The flags in the shape of config.ts's FlagDoc. */
export function logFlagDocs(): ReturnType<typeof integerFlagDocs> {
  return integerFlagDocs(LOG_FLAG_SPECS);
}

/** Reads the log flags (`get` as for parseLimits); an error message naming the flag when one is bad. */
export function parseLogLimits(get: (flag: string) => { text: string; label: string } | undefined): LogLimits | string {
  const v = parseIntegerFlags(LOG_FLAG_SPECS, get);
  if (typeof v === 'string') return v;
  if (v.decisionLogMaxBytes !== 0 && v.decisionLogMaxBytes < MIN_ROTATE_BYTES) {
    const raw = get('decision-log-max-bytes')!;
    return `${raw.label}: must be 0 (no rotation) or at least ${MIN_ROTATE_BYTES}, got "${raw.text}"`;
  }
  return {
    budget: { linesPerSec: v.linesPerSec, lineBurst: v.lineBurst, bytesPerSec: v.bytesPerSec, byteBurst: v.byteBurst },
    decisionLogRotation: { maxBytes: v.decisionLogMaxBytes, keep: v.decisionLogKeep },
  };
}

export const DEFAULT_LOG_LIMITS: Readonly<LogLimits> = Object.freeze(parseLogLimits(() => undefined) as LogLimits);

/** The main log's budget for createLogger, from a parsed config (the defaults when it has none). */
export function mainLogBudget(config: { logLimits?: LogLimits }): { limits: LogBudgetLimits } {
  return { limits: (config.logLimits ?? DEFAULT_LOG_LIMITS).budget };
}

/**
 * Structured logging for the service. One job: turn (level, message, fields)
 * into one line on a stream. `json` is for machines (one object per line:
 * time, level, msg, then the fields); `pretty` is for a human at a terminal.
 *
 * Loggers are cheap to derive with child(fields): every line of the child
 * carries those fields (e.g. { component: 'nat' }), so call sites stay short.
 *
 * With a `budget`, the log (a logger and all its children) writes at most so
 * many lines and bytes per second (src/log-budget.ts): a line over budget is
 * not even formatted, and a "log lines suppressed" summary counts such lines
 * per message, once per interval while it goes on.
 */
import { BudgetedWriter, LogBudget, type LogBudgetLimits, type LogBudgetStats, type Schedule } from './log-budget.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFormat = 'json' | 'pretty';

export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];
export const LOG_FORMATS: readonly LogFormat[] = ['json', 'pretty'];

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  /** A logger whose every line also carries `fields` (the call's own fields win on a clash). */
  child(fields: Record<string, unknown>): Logger;
  /** Whether a line at `level` would be written: skip building expensive fields when not. */
  enabled(level: LogLevel): boolean;
  /** The budget's counters (/stats.logs.main), when the log has one. */
  budgetStats?(): LogBudgetStats;
  /** Writes the pending "log lines suppressed" summary now (at shutdown). */
  flush?(): void;
}

/** Anything with write(string): process.stderr, a file stream, a test sink. */
export interface LogStream {
  write(line: string): unknown;
}

export interface LoggerOptions {
  level: LogLevel;
  format: LogFormat;
  stream: LogStream;
  /** Time source for the `time` field; defaults to the wall clock (logs are for humans correlating events). */
  now?: () => Date;
  /** A global bound on lines and bytes per second (--log-lines-per-sec ...); none when absent. */
  budget?: {
    limits: LogBudgetLimits;
    /** Monotonic milliseconds for the buckets; performance.now by default. */
    clock?: () => number;
    schedule?: Schedule;
  };
}

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export function isLogLevel(x: string): x is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(x);
}

export function isLogFormat(x: string): x is LogFormat {
  return (LOG_FORMATS as readonly string[]).includes(x);
}

export function createLogger(options: LoggerOptions): Logger {
  const now = options.now ?? (() => new Date());
  const format = options.format === 'json' ? formatJson : formatPretty;
  const b = options.budget;
  const writer =
    b === undefined
      ? undefined
      : new BudgetedWriter({
          stream: options.stream,
          budget: new LogBudget({ limits: b.limits, now: b.clock ?? (() => performance.now()) }),
          // Whatever the level threshold: it is the only trace of the lines it counts.
          summaryLine: (s) => format(now(), 'warn', 'log lines suppressed', { ...s }),
          ...(b.schedule ? { schedule: b.schedule } : {}),
        });
  return makeLogger(options, now, format, {}, writer);
}

type Formatter = (time: Date, level: LogLevel, msg: string, fields: Record<string, unknown>) => string;

function makeLogger(
  options: LoggerOptions,
  now: () => Date,
  format: Formatter,
  bound: Record<string, unknown>,
  writer: BudgetedWriter | undefined,
): Logger {
  const threshold = RANK[options.level];
  const emit = (level: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (RANK[level] < threshold) return;
    const line = (): string => format(now(), level, msg, fields === undefined ? bound : { ...bound, ...fields });
    // The message is the reason a suppressed line is counted under: a code constant, so the summary stays small.
    if (writer === undefined) options.stream.write(line());
    else writer.write(msg, line);
  };
  return {
    debug: (msg, fields) => emit('debug', msg, fields),
    info: (msg, fields) => emit('info', msg, fields),
    warn: (msg, fields) => emit('warn', msg, fields),
    error: (msg, fields) => emit('error', msg, fields),
    child: (fields) => makeLogger(options, now, format, { ...bound, ...fields }, writer),
    enabled: (level) => RANK[level] >= threshold,
    ...(writer === undefined ? {} : { budgetStats: () => ({ ...writer.stats }), flush: () => writer.close() }),
  };
}

/** A logger that writes nothing: for tests and library callers that do not care. */
export const NULL_LOGGER: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child() {
    return NULL_LOGGER;
  },
  enabled() {
    return false;
  },
};

function formatJson(time: Date, level: LogLevel, msg: string, fields: Record<string, unknown>): string {
  // time/level/msg first and never overwritten by a field of the same name:
  // a consumer must be able to rely on them.
  const record: Record<string, unknown> = { time: time.toISOString(), level, msg };
  for (const [k, v] of Object.entries(fields)) {
    if (k === 'time' || k === 'level' || k === 'msg') record[`field.${k}`] = v;
    else record[k] = v;
  }
  return safeStringify(record) + '\n';
}

function formatPretty(time: Date, level: LogLevel, msg: string, fields: Record<string, unknown>): string {
  let line = `${time.toISOString()} ${level.toUpperCase().padEnd(5)} ${msg}`;
  for (const [k, v] of Object.entries(fields)) if (v !== undefined) line += ` ${k}=${prettyValue(v)}`;
  return line + '\n';
}

function prettyValue(v: unknown): string {
  if (typeof v === 'string') return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  if (v instanceof Error) return JSON.stringify(v.message);
  const s = safeStringify(v);
  return s === undefined ? String(v) : s;
}

/** Errors and bigints do not survive JSON.stringify by default; logs must not lose them or throw. */
function jsonReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    const code = (value as NodeJS.ErrnoException).code;
    return code === undefined ? { message: value.message } : { message: value.message, code };
  }
  if (typeof value === 'bigint') return value.toString();
  return value;
}

/** A log line must never throw (a cycle in a field would): fall back to a marker. */
function safeStringify(v: unknown): string {
  try {
    return JSON.stringify(v, jsonReplacer);
  } catch {
    return '"[unserializable]"';
  }
}

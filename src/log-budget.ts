/**
 * A global budget on one log's output, so that no stream of events (a guest
 * asking for 8,000 unique blocked names a second, each new to every
 * per-destination limit) can turn a log into a disk-filling channel.
 *
 *  - LogBudget (pure, injected clock): two TokenBuckets, lines per second
 *    and bytes per second, each with a burst. A line is written only when
 *    both cover it; otherwise it is suppressed and counted under its reason.
 *  - BudgetedWriter: puts a LogStream behind a LogBudget and writes one
 *    summary line per interval while lines are being suppressed (and the
 *    rest at close): how many, per reason. Summary lines are not charged to
 *    the budget (they are what says the budget is at work); they are bounded
 *    by themselves: at most one per interval, at most MAX_SUMMARY_REASONS
 *    reasons of at most MAX_REASON_CHARS characters each.
 *
 * The buckets start full: the start-up lines of a normal job and its first
 * few hundred decisions always fit in the burst.
 */
import { TokenBucket } from '../dns/token-bucket.js';
import type { LogStream } from './log.js';

export interface LogBudgetLimits {
  linesPerSec: number;
  lineBurst: number;
  bytesPerSec: number;
  byteBurst: number;
}

/**
 * 60 s of a flood write at most byteBurst + 60 x bytesPerSec = 736 KiB to
 * one log (and at most 1,000 + 60 x 20 lines), so the main log and the
 * decision log together stay under 2 MB a minute; a normal job's start-up
 * and first 1,000 lines (256 KiB) are never suppressed.
 */
export const DEFAULT_LOG_BUDGET: Readonly<LogBudgetLimits> = Object.freeze({
  linesPerSec: 20,
  lineBurst: 1000,
  bytesPerSec: 8 * 1024,
  byteBurst: 256 * 1024,
});

/** While lines are being suppressed, one summary line per this long. */
export const LOG_SUMMARY_INTERVAL_MS = 10_000;
/** Reasons a summary lists; the lines of any further reason are counted under OTHER_REASONS. */
export const MAX_SUMMARY_REASONS = 16;
/** A reason longer than this is cut (reasons are code constants; this only bounds a summary line). */
export const MAX_REASON_CHARS = 64;
export const OTHER_REASONS = '(other)';

/** What one summary line says (after "msg": "log lines suppressed"). */
export interface SuppressionSummary {
  /** Lines suppressed since the previous summary. */
  suppressed: number;
  /** The same lines per reason (at most MAX_SUMMARY_REASONS keys plus OTHER_REASONS). */
  byReason: Record<string, number>;
  /** From the first of these lines to this summary (ms). */
  periodMs: number;
  /** Lines suppressed since start, these included. */
  suppressedTotal: number;
}

export interface LogBudgetStats {
  /** Lines written within the budget (summaries not included). */
  written: number;
  writtenBytes: number;
  /** Lines not written because the budget was spent. */
  suppressed: number;
  /** Summary lines written. */
  summaries: number;
}

export interface LogBudgetOptions {
  limits: LogBudgetLimits;
  /** Monotonic milliseconds. */
  now: () => number;
  intervalMs?: number;
  maxReasons?: number;
}

export class LogBudget {
  private readonly lines: TokenBucket;
  private readonly bytes: TokenBucket;
  private readonly intervalMs: number;
  private readonly maxReasons: number;
  /** Suppressed since the last summary, per reason (bounded by maxReasons + 1 keys). */
  private readonly pending = new Map<string, number>();
  private pendingCount = 0;
  private periodStart = 0;
  readonly stats: LogBudgetStats = { written: 0, writtenBytes: 0, suppressed: 0, summaries: 0 };

  constructor(private readonly o: LogBudgetOptions) {
    this.lines = new TokenBucket({ rate: o.limits.linesPerSec, burst: o.limits.lineBurst, now: o.now });
    this.bytes = new TokenBucket({ rate: o.limits.bytesPerSec, burst: o.limits.byteBurst, now: o.now });
    this.intervalMs = o.intervalMs ?? LOG_SUMMARY_INTERVAL_MS;
    this.maxReasons = o.maxReasons ?? MAX_SUMMARY_REASONS;
  }

  /** Whether one more line may be written now: lets a caller skip formatting a line that would be suppressed anyway. */
  hasRoom(): boolean {
    return this.lines.available() >= 1;
  }

  /** Takes one line and `bytes` from the budget when both are there (true); otherwise counts the line as suppressed under `reason`. */
  admit(reason: string, bytes: number): boolean {
    // Check both before taking either: a line refused for its bytes must not cost a line token.
    if (this.lines.available() >= 1 && this.bytes.available() >= bytes) {
      this.lines.take(1);
      this.bytes.take(bytes);
      this.stats.written++;
      this.stats.writtenBytes += bytes;
      return true;
    }
    this.suppress(reason);
    return false;
  }

  /** Counts one line as suppressed under `reason`. */
  suppress(reason: string): void {
    if (this.pendingCount === 0) this.periodStart = this.o.now();
    this.pendingCount++;
    this.stats.suppressed++;
    let key = reason.length > MAX_REASON_CHARS ? reason.slice(0, MAX_REASON_CHARS) : reason;
    if (!this.pending.has(key) && this.pending.size >= this.maxReasons) key = OTHER_REASONS;
    this.pending.set(key, (this.pending.get(key) ?? 0) + 1);
  }

  /** Milliseconds until the pending summary is due (0: now), or undefined when nothing is pending. */
  msUntilSummary(): number | undefined {
    if (this.pendingCount === 0) return undefined;
    return Math.max(0, this.periodStart + this.intervalMs - this.o.now());
  }

  /**
   * The summary of the lines suppressed since the last one, when there are
   * any and `intervalMs` has passed since the first of them (or `force`);
   * it starts a new period. Undefined otherwise.
   */
  takeSummary(force = false): SuppressionSummary | undefined {
    if (this.pendingCount === 0) return undefined;
    const now = this.o.now();
    if (!force && now - this.periodStart < this.intervalMs) return undefined;
    const summary: SuppressionSummary = {
      suppressed: this.pendingCount,
      byReason: Object.fromEntries(this.pending),
      periodMs: Math.round(now - this.periodStart),
      suppressedTotal: this.stats.suppressed,
    };
    this.pending.clear();
    this.pendingCount = 0;
    this.stats.summaries++;
    return summary;
  }
}

/** Runs `fn` once after `ms`; the service's is an unref'd setTimeout, tests drive their own. */
export type Schedule = (fn: () => void, ms: number) => { cancel(): void };

export const realSchedule: Schedule = (fn, ms) => {
  const t = setTimeout(fn, ms);
  t.unref(); // a pending summary never keeps the process alive
  return { cancel: () => clearTimeout(t) };
};

export interface BudgetedWriterOptions {
  stream: LogStream;
  budget: LogBudget;
  /** The summary as one line of this log's format (newline included). */
  summaryLine: (s: SuppressionSummary) => string;
  schedule?: Schedule;
}

/** A LogStream behind a LogBudget, with the summary lines. */
export class BudgetedWriter {
  private timer: { cancel(): void } | undefined;
  private readonly schedule: Schedule;

  constructor(private readonly o: BudgetedWriterOptions) {
    this.schedule = o.schedule ?? realSchedule;
  }

  get stats(): LogBudgetStats {
    return this.o.budget.stats;
  }

  /**
   * Writes `line` (or the line `line()` builds: not built at all when there
   * is no room) if the budget covers it; returns whether it was written.
   */
  write(reason: string, line: string | (() => string)): boolean {
    this.flush(false); // a summary that is due goes before the line that follows it
    const b = this.o.budget;
    if (!b.hasRoom()) {
      b.suppress(reason);
      this.arm();
      return false;
    }
    const text = typeof line === 'string' ? line : line();
    if (b.admit(reason, Buffer.byteLength(text))) {
      this.o.stream.write(text);
      return true;
    }
    this.arm();
    return false;
  }

  /** Writes the pending summary if it is due, or at once with `force`. */
  flush(force: boolean): void {
    const s = this.o.budget.takeSummary(force);
    if (s !== undefined) this.o.stream.write(this.o.summaryLine(s));
  }

  /** The last summary now, and no timer left behind. */
  close(): void {
    this.timer?.cancel();
    this.timer = undefined;
    this.flush(true);
  }

  /** A timer for the pending summary: it is written when due even if no line comes after the flood. */
  private arm(): void {
    if (this.timer !== undefined) return;
    const wait = this.o.budget.msUntilSummary();
    if (wait === undefined) return;
    this.timer = this.schedule(() => {
      this.timer = undefined;
      this.flush(false);
      this.arm(); // suppressed again since (or not yet due): the next one
    }, wait);
  }
}

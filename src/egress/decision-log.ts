/**
 * The egress decision log: one JSON object per decision, with an id that the
 * client also sees (the 403's x-moat-decision header, the DNS answer's
 * Extended DNS Error text), so "blocked by policy" can be told from "the
 * network is down" and traced to one line.
 *
 *  - Every decision goes to the --decision-log file when one is given.
 *  - Blocked decisions also go to the main log at info ("egress decision");
 *    allowed ones at debug.
 *  - Lines are rate-limited per destination (a guest retrying in a loop must
 *    not fill a disk): at most `burst` lines per `windowMs` for one
 *    destination; the next line written after a quiet spell says how many
 *    were suppressed. The table of destinations is bounded (oldest evicted).
 *  - Behind that, the file has a global budget (src/log-budget.ts: lines
 *    and bytes per second): a guest asking for a new name each time passes
 *    every per-destination limit, not this one. What it holds back is
 *    counted per reason in "log lines suppressed" summary lines. (The main
 *    log has its own budget, in the Logger.) The counters in `stats` count
 *    every decision, written or not.
 */
import { randomBytes } from 'node:crypto';
import type { Logger, LogStream } from '../log.js';
import { BudgetedWriter, DEFAULT_LOG_BUDGET, LogBudget, type LogBudgetLimits, type LogBudgetStats, type Schedule } from '../log-budget.js';
import { RotatingFile, type RotationOptions } from '../rotating-file.js';

export type DecisionVerdict = 'allowed' | 'blocked' | 'would-block';
/** 'quic': a UDP flow decided by the name in its QUIC Initial. 'icmp': an echo request (dst "ip:0"). */
export type DecisionProto = 'tcp' | 'udp' | 'quic' | 'dns' | 'icmp';

export interface DecisionRecord {
  id: string;
  decision: DecisionVerdict;
  reason: string;
  /** The rule as written that decided, or null. */
  rule: string | null;
  proto: DecisionProto;
  /** "ip:port" for flows, the queried name for DNS. */
  dst: string;
  /** The hostname involved (SNI, Host, pinned or queried name), or null. */
  name: string | null;
  /** How the name was learnt: 'sni', 'host', 'pin', 'dns', or null. */
  via: string | null;
  /** Extra facts (the address dialed, a refused range...). */
  detail?: string;
  /** The `moat host` network whose guest it was (absent under `moat serve`). */
  network?: string;
  /** TLS flows: whether the ClientHello carried encrypted_client_hello (its real name is hidden). */
  ech?: boolean;
  /** Ask mode (--on-unlisted ask): the request waited on a pending decision. */
  asked?: true;
  /** Who answered it: 'api', 'callback', 'timeout', or 'reload' (a reload came to cover the name); absent: refused before anyone could, e.g. the table was full. */
  answeredBy?: 'api' | 'callback' | 'timeout' | 'reload';
  /** The pending decision's id (GET /decisions/pending), when there was one. */
  askId?: string;
  /** An intercepted request (--inject): the names of the secrets injected into it, comma-separated (never a value). */
  injected?: string;
}

/**
 * A flow that was open, at its close: the bytes it moved each way and what
 * allowed it (`moat learn --budgets` reads these lines). Written with every
 * field a decision line has (so readers of the file see one shape): a fresh
 * id, decision "allowed", reason "flow-closed", plus bytesUp and bytesDown.
 * It is not a new decision: not counted in /stats.decisions, not passed to
 * onDecision listeners, and `moat learn` does not read it as one.
 */
export interface FlowBytesRecord {
  proto: 'tcp' | 'udp' | 'quic';
  /** "ip:port" as the guest (client) sent it, or "name:port" for a proxy target. */
  dst: string;
  /** The rule that allowed it, and the name it was allowed for. */
  rule: string | null;
  name: string | null;
  /** Guest (client) -> world, and back. */
  bytesUp: number;
  bytesDown: number;
}

/** The reason of a flow line (FlowBytesRecord). */
export const FLOW_CLOSED = 'flow-closed';

export interface DecisionLogOptions {
  /** Where every decision is written as one JSON line (the --decision-log file), or undefined. */
  sink?: LogStream;
  now: () => number;
  /** Lines per destination per window. */
  burst: number;
  windowMs: number;
  /** Destinations remembered for rate limiting. */
  maxDestinations: number;
  /** The global budget of the `sink` (DEFAULT_LOG_BUDGET when absent). */
  budget?: LogBudgetLimits;
  /** For the budget's summary timer (tests). */
  schedule?: Schedule;
  /** The `moat host` network these decisions belong to: every record carries it. */
  network?: string;
}

export const DEFAULT_DECISION_LOG_LIMITS = Object.freeze({ burst: 20, windowMs: 10_000, maxDestinations: 4096 });

interface Bucket {
  windowStart: number;
  written: number;
  suppressed: number;
}

/**
 * At most `burst` events per `windowMs` for one key; the table of keys is
 * bounded (least recently used evicted). What every per-destination log
 * limit in the service uses.
 */
export class PerKeyRateLimit {
  private readonly buckets = new Map<string, Bucket>();
  suppressedTotal = 0;

  constructor(private readonly opts: { now: () => number; burst: number; windowMs: number; maxKeys: number }) {}

  get keys(): number {
    return this.buckets.size;
  }

  /** -1 when the event is suppressed; otherwise how many were suppressed for this key since the last admitted one. */
  admit(key: string): number {
    const now = this.opts.now();
    let b = this.buckets.get(key);
    if (b === undefined) {
      if (this.buckets.size >= this.opts.maxKeys) {
        const oldest = this.buckets.keys().next().value;
        if (oldest !== undefined) this.buckets.delete(oldest);
      }
      b = { windowStart: now, written: 0, suppressed: 0 };
      this.buckets.set(key, b);
    } else {
      // Keep Map order = least recently used first, for eviction.
      this.buckets.delete(key);
      this.buckets.set(key, b);
    }
    if (now - b.windowStart >= this.opts.windowMs) {
      b.windowStart = now;
      b.written = 0;
    }
    if (b.written >= this.opts.burst) {
      b.suppressed++;
      this.suppressedTotal++;
      return -1;
    }
    b.written++;
    const suppressed = b.suppressed;
    b.suppressed = 0;
    return suppressed;
  }
}

export interface DecisionLogStats {
  allowed: number;
  blocked: number;
  wouldBlock: number;
  suppressedLines: number;
}

export class DecisionLog {
  private readonly limit: PerKeyRateLimit;
  private readonly file: BudgetedWriter | undefined;
  private readonly prefix = randomBytes(3).toString('hex');
  private counter = 0;
  private readonly listeners = new Set<(r: DecisionRecord) => void>();
  readonly stats: DecisionLogStats = { allowed: 0, blocked: 0, wouldBlock: 0, suppressedLines: 0 };

  constructor(
    private readonly opts: DecisionLogOptions,
    private readonly log: Logger,
  ) {
    this.limit = new PerKeyRateLimit({ now: opts.now, burst: opts.burst, windowMs: opts.windowMs, maxKeys: opts.maxDestinations });
    const sink = opts.sink;
    this.file =
      sink === undefined
        ? undefined
        : new BudgetedWriter({
            stream: sink,
            budget: new LogBudget({ limits: opts.budget ?? DEFAULT_LOG_BUDGET, now: opts.now }),
            summaryLine: (s) => JSON.stringify({ time: new Date().toISOString(), msg: 'log lines suppressed', ...s }) + '\n',
            ...(opts.schedule ? { schedule: opts.schedule } : {}),
          });
  }

  /** The file's budget counters (/stats.logs.decisionLog), or undefined without a file. */
  budgetStats(): LogBudgetStats | undefined {
    return this.file === undefined ? undefined : { ...this.file.stats };
  }

  /** Writes the file's pending summary (at shutdown); the sink is the caller's to end. */
  close(): void {
    this.file?.close();
  }

  /** A fresh decision id: unique within this process, and unlikely to repeat across restarts. */
  nextId(): string {
    this.counter++;
    return `${this.prefix}-${this.counter.toString(36)}`;
  }

  /** Calls `fn` with every decision (not rate-limited: embedders count what they like); returns the unsubscribe. */
  subscribe(fn: (r: DecisionRecord) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  record(r: DecisionRecord): void {
    if (this.opts.network !== undefined) r.network = this.opts.network;
    if (r.decision === 'allowed') this.stats.allowed++;
    else if (r.decision === 'blocked') this.stats.blocked++;
    else this.stats.wouldBlock++;
    for (const fn of this.listeners) {
      try {
        fn(r);
      } catch (err) {
        this.log.error('decision listener failed', { error: err });
      }
    }

    const suppressedBefore = this.limit.admit(`${r.proto} ${r.dst}`);
    if (suppressedBefore < 0) {
      this.stats.suppressedLines++;
      return;
    }
    const line: Record<string, unknown> = { ...r };
    if (suppressedBefore > 0) line['suppressedBefore'] = suppressedBefore;
    this.file?.write(r.reason, () => JSON.stringify({ time: new Date().toISOString(), ...line }) + '\n');
    if (r.decision === 'allowed') {
      if (this.log.enabled('debug')) this.log.debug('egress decision', line);
    } else {
      this.log.info('egress decision', line);
    }
  }

  /**
   * One line per closed flow with its bytes, in the file only (and the main
   * log at debug). Not limited per destination: every flow's bytes count for
   * what `moat learn --budgets` proposes; the file's global budget still
   * bounds them (suppressed lines are counted there, reason flow-closed).
   */
  flowClosed(f: FlowBytesRecord): void {
    if (f.bytesUp === 0 && f.bytesDown === 0) return;
    const line: Record<string, unknown> = {
      id: this.nextId(),
      decision: 'allowed',
      reason: FLOW_CLOSED,
      rule: f.rule,
      proto: f.proto,
      dst: f.dst,
      name: f.name,
      via: null,
      bytesUp: f.bytesUp,
      bytesDown: f.bytesDown,
    };
    if (this.opts.network !== undefined) line['network'] = this.opts.network;
    this.file?.write(FLOW_CLOSED, () => JSON.stringify({ time: new Date().toISOString(), ...line }) + '\n');
    if (this.log.enabled('debug')) this.log.debug('flow closed', line);
  }
}

/**
 * Opens the --decision-log file for appending (rotated by size when
 * `rotation` says so), failing with the path in the message if it cannot be.
 */
export async function openDecisionLog(path: string, rotation?: RotationOptions, onError?: (e: Error) => void): Promise<RotatingFile> {
  try {
    return new RotatingFile(path, rotation, onError);
  } catch (e) {
    throw new Error(`--decision-log: ${(e as Error).message}`);
  }
}

/** Reports the first error of the decision log file on the main log; later ones are only counted (/stats.logs.decisionLog.errors). */
export function decisionFileError(log: Logger): (e: Error) => void {
  let told = false;
  return (e) => {
    if (told) return;
    told = true;
    log.error('decision log file failed; further errors are only counted in /stats', { error: e });
  };
}

/** /stats.logs: what each log's budget wrote and held back, and the decision log file's rotations. */
export function logStats(main: Logger, decisions: DecisionLog | undefined, file: RotatingFile | undefined): Record<string, unknown> {
  const decisionLog = decisions?.budgetStats();
  return {
    ...(main.budgetStats ? { main: main.budgetStats() } : {}),
    ...(decisionLog === undefined ? {} : { decisionLog: { ...decisionLog, ...(file === undefined ? {} : file.stats) } }),
  };
}

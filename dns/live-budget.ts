/**
 * The budget of live lookups: what a guest (one `moat serve`) or the clients
 * of one `moat proxy` may make Moat ask upstream about names it did not
 * resolve at start-up (names below `*.domain`, audit-mode names).
 *
 * Why: every unique name below an allowed wildcard reaches that domain's
 * authoritative servers. A guest that encodes data in the names (4 labels of
 * 63 base32 characters, 16-100 queries in flight) carried 130-230 KB/s out
 * that way. Here a NEW name costs one token from a names/s bucket and its
 * length from a name-bytes/s bucket (each with a burst); a name already
 * answered and still within its TTL costs nothing, since asking it again
 * tells the upstream nothing new. The DNS responder, dial-by-name
 * (src/egress/dial-targets.ts) and the proxy's targets all spend from the one
 * budget of their runtime.
 *
 * The remembered names are bounded (oldest-used evicted first): an evicted
 * name simply costs again, so eviction never opens the budget.
 *
 * Pure: the clock is injected; no timers.
 */
import { TokenBucket } from './token-bucket.js';
import { TtlCache } from './ttl-cache.js';

export interface LiveBudgetLimits {
  /** New names per second, and how many may come at once. */
  readonly namesPerSecond: number;
  readonly nameBurst: number;
  /** Bytes of new names (their text length) per second, and how many at once. */
  readonly bytesPerSecond: number;
  readonly byteBurst: number;
}

/**
 * A package manager touching 20-50 names of a CDN at once fits the bursts
 * (64 names, 8 KiB of names); sustained, 10 names/s or 1 KiB of names per
 * second. A tunnel of 260-byte names is held to 1 KiB/s plus the 8 KiB burst:
 * 1.3 KB/s averaged over 30 s, 1.16 KB/s over 60 s (issue 14's target is
 * <= 2 KB/s).
 */
export const DEFAULT_LIVE_BUDGET: Readonly<LiveBudgetLimits> = Object.freeze({
  namesPerSecond: 10,
  nameBurst: 64,
  bytesPerSecond: 1024,
  byteBurst: 8192,
});

/** The longest name a budget must be able to pay for (RFC 1035 2.3.4: 255 octets on the wire, 253 as text). */
export const MAX_NAME_TEXT = 253;
export const DEFAULT_MAX_REMEMBERED = 4096;
/** How long a name is free while its first lookup is still running (the retry policy's worst case is 9.3 s). */
export const DEFAULT_PENDING_MS = 10_000;
export const DEFAULT_REPORT_INTERVAL_MS = 10_000;

export interface LiveBudgetOptions extends LiveBudgetLimits {
  /** Monotonic milliseconds. */
  readonly now: () => number;
  /** false (`--no-live-lookups`): every name not remembered is refused ('off'). */
  readonly enabled?: boolean;
  /** Names remembered as answered, at most. */
  readonly maxRemembered?: number;
  readonly pendingMs?: number;
  /** Refusals are reported (logged) at most once per this interval. */
  readonly reportIntervalMs?: number;
}

/**
 * free: remembered and within TTL, costs nothing; spent: a new name, paid for;
 * over-budget: a new name the buckets cannot cover (nothing taken);
 * off: live lookups are turned off.
 */
export type LiveSpend = 'free' | 'spent' | 'over-budget' | 'off';

export interface LiveBudgetStats {
  spent: number;
  spentBytes: number;
  free: number;
  overBudget: number;
  off: number;
  /** Names remembered now, and how many were evicted to stay within the bound. */
  remembered: number;
  evicted: number;
}

export class LiveLookupBudget {
  readonly stats: LiveBudgetStats = { spent: 0, spentBytes: 0, free: 0, overBudget: 0, off: 0, remembered: 0, evicted: 0 };
  private readonly names: TokenBucket;
  private readonly bytes: TokenBucket;
  /** Names answered (or being looked up) until their expiry. */
  private readonly remembered: TtlCache<null>;
  private readonly pendingMs: number;
  private readonly reportIntervalMs: number;
  private unreported = 0;
  private lastReport = -Infinity;

  constructor(private readonly o: LiveBudgetOptions) {
    validateLimits(o);
    this.names = new TokenBucket({ rate: o.namesPerSecond, burst: o.nameBurst, now: o.now });
    this.bytes = new TokenBucket({ rate: o.bytesPerSecond, burst: o.byteBurst, now: o.now });
    this.remembered = new TtlCache(Math.max(1, o.maxRemembered ?? DEFAULT_MAX_REMEMBERED));
    this.pendingMs = o.pendingMs ?? DEFAULT_PENDING_MS;
    this.reportIntervalMs = o.reportIntervalMs ?? DEFAULT_REPORT_INTERVAL_MS;
  }

  get enabled(): boolean {
    return this.o.enabled !== false;
  }

  /** For messages: "10 names/s, 1024 name bytes/s". */
  get describe(): string {
    return `${this.o.namesPerSecond} names/s, ${this.o.bytesPerSecond} name bytes/s`;
  }

  /**
   * May `name` (canonical) be looked up upstream now? A new name that is paid
   * for is remembered as pending, so the same name asked again while its
   * lookup runs is free.
   */
  spend(name: string): LiveSpend {
    const now = this.o.now();
    if (this.remembered.get(name, now) !== undefined) {
      this.stats.free++;
      return 'free';
    }
    this.stats.remembered = this.remembered.size;
    if (!this.enabled) {
      this.stats.off++;
      return 'off';
    }
    // Both or neither: a refusal must not drain one bucket for nothing.
    if (this.names.available() < 1 || this.bytes.available() < name.length) {
      this.stats.overBudget++;
      this.unreported++;
      return 'over-budget';
    }
    this.names.take(1);
    this.bytes.take(name.length);
    this.stats.spent++;
    this.stats.spentBytes += name.length;
    this.remember(name, now + this.pendingMs);
    return 'spent';
  }

  /** The upstream answered `name` (addresses, NODATA or NXDOMAIN) valid for `ttlSeconds`: asking again within it is free. */
  answered(name: string, ttlSeconds: number): void {
    this.remember(name, this.o.now() + Math.max(0, ttlSeconds) * 1000);
  }

  /**
   * Refusals since the last report, when a report is due (at most one per
   * interval), else 0. Callers log a line when this is above 0: a flood of
   * refusals costs one log line per interval, and /stats has every one.
   */
  takeReport(): number {
    const now = this.o.now();
    if (this.unreported === 0 || now - this.lastReport < this.reportIntervalMs) return 0;
    const n = this.unreported;
    this.unreported = 0;
    this.lastReport = now;
    return n;
  }

  private remember(name: string, expiry: number): void {
    this.remembered.set(name, null, expiry);
    this.stats.evicted = this.remembered.evicted;
    this.stats.remembered = this.remembered.size;
  }
}

/** Throws a RangeError naming the first bad limit; flags validate earlier with their own names. */
export function validateLimits(l: LiveBudgetLimits): void {
  for (const key of ['namesPerSecond', 'nameBurst', 'bytesPerSecond', 'byteBurst'] as const) {
    if (!(Number.isFinite(l[key]) && l[key] >= 0)) throw new RangeError(`live lookup budget: ${key} must be a finite number >= 0, got ${l[key]}`);
  }
  if (l.nameBurst < 1) throw new RangeError(`live lookup budget: nameBurst must be at least 1 (one name), got ${l.nameBurst}`);
  if (l.byteBurst < MAX_NAME_TEXT) throw new RangeError(`live lookup budget: byteBurst must be at least ${MAX_NAME_TEXT} (the longest name), got ${l.byteBurst}`);
}

/**
 * A token bucket on an injected clock: `rate` tokens per second refill a
 * bucket that holds at most `burst`. Callers take a cost (1 per name, the
 * length of a name, the size of a log line) and are refused when the bucket
 * cannot cover it.
 *
 * Pure (no timers, no I/O): refill is computed from `now()` on each call,
 * so a ManualClock drives it in tests and an idle bucket costs nothing.
 * Lives in dns/ because the live-lookup budget is its first user; src/ (the
 * log budget) imports it from here so there is one implementation.
 */
export interface TokenBucketOptions {
  /** Tokens added per second; 0 means the bucket never refills. */
  rate: number;
  /** Capacity; the bucket starts full. */
  burst: number;
  /** Monotonic milliseconds. */
  now: () => number;
}

export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(private readonly o: TokenBucketOptions) {
    if (!(o.rate >= 0) || !Number.isFinite(o.rate)) throw new RangeError(`token bucket rate must be a finite number >= 0, got ${o.rate}`);
    if (!(o.burst >= 0) || !Number.isFinite(o.burst)) throw new RangeError(`token bucket burst must be a finite number >= 0, got ${o.burst}`);
    this.tokens = o.burst;
    this.last = o.now();
  }

  /** Tokens available now (after refill). */
  available(): number {
    this.refill();
    return this.tokens;
  }

  /** Takes `cost` tokens if the bucket holds them all; otherwise takes nothing and returns false. */
  take(cost: number): boolean {
    this.refill();
    if (cost > this.tokens) return false;
    this.tokens -= cost;
    return true;
  }

  private refill(): void {
    const now = this.o.now();
    const elapsed = now - this.last;
    if (elapsed <= 0) return; // a clock that did not move (or went back) adds nothing
    this.last = now;
    this.tokens = Math.min(this.o.burst, this.tokens + (elapsed / 1000) * this.o.rate);
  }
}

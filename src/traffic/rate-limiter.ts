/**
 * A byte rate limit shared by every flow of one guest (moat serve) or one
 * client (moat proxy), in one direction: a token bucket (dns/token-bucket.ts)
 * of `rate` bytes per second holding at most `burst`, like Firecracker's
 * rate limiter. It is applied by pausing reads, never by dropping: a flow
 * asks how much it may pass (`allowance`), passes at most that and spends it
 * (`spend`), keeps the rest, stops reading its source and waits (`wait`);
 * one timer for all waiting flows wakes them in turn (the first to wait goes
 * first, and goes to the back when it has to wait again) once the bucket
 * holds `quantum` bytes again.
 *
 * The invariant the property test checks: over any schedule, bytes spent by
 * time t <= rate x t + burst (spend never takes more than allowance).
 */
import { TokenBucket } from '../../dns/token-bucket.js';

export interface RateLimitSpec {
  /** Bytes per second. */
  rate: number;
  /** Bytes that may pass at once (the bucket's capacity, full at start). */
  burst: number;
}

export interface LimiterTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const NODE_LIMITER_TIMERS: LimiterTimers = {
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref?.();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** The default burst for a rate: 100 ms of it, at least 64 KiB (one host read; smaller bursts only add wake-ups). */
export function defaultBurst(rate: number): number {
  return Math.max(64 * 1024, Math.floor(rate / 10));
}

/** The most a woken flow waits for: smaller grants cost a timer each. */
const MAX_QUANTUM = 16 * 1024;

export interface RateLimiterStats {
  rate: number;
  burst: number;
  /** Bytes passed since start. */
  bytes: number;
  /** Times a flow had to wait (its reads paused). */
  waits: number;
  /** Flows waiting now. */
  waiting: number;
  /** Datagrams dropped because the bucket was empty (UDP cannot be paused). */
  droppedDatagrams: number;
  droppedBytes: number;
}

export class RateLimiter {
  private readonly bucket: TokenBucket;
  private readonly waiters = new Set<() => void>();
  private timer: unknown;
  private readonly quantum: number;
  private readonly counters = { bytes: 0, waits: 0, droppedDatagrams: 0, droppedBytes: 0 };

  constructor(
    readonly spec: RateLimitSpec,
    now: () => number,
    private readonly timers: LimiterTimers = NODE_LIMITER_TIMERS,
  ) {
    if (!(spec.rate > 0)) throw new RangeError(`rate must be > 0 bytes/s, got ${spec.rate}`);
    if (!(spec.burst >= 1)) throw new RangeError(`burst must be >= 1 byte, got ${spec.burst}`);
    this.bucket = new TokenBucket({ rate: spec.rate, burst: spec.burst, now });
    this.quantum = Math.max(1, Math.min(spec.burst, MAX_QUANTUM));
  }

  /** Whole bytes that may pass now. */
  allowance(): number {
    return Math.floor(this.bucket.available());
  }

  /** Records `n` bytes passed; `n` must not exceed allowance() (then it is clamped to it). */
  spend(n: number): void {
    if (n <= 0) return;
    const take = Math.min(n, this.allowance());
    this.bucket.take(take);
    this.counters.bytes += take;
  }

  /**
   * For datagrams, which cannot wait: passes all `n` bytes or none (and
   * counts the drop). true: send it.
   */
  admitDatagram(n: number): boolean {
    if (this.bucket.take(n)) {
      this.counters.bytes += n;
      return true;
    }
    this.counters.droppedDatagrams++;
    this.counters.droppedBytes += n;
    return false;
  }

  /** Calls `wake` once, when at least a quantum may pass. A waker already waiting is not added twice. */
  wait(wake: () => void): void {
    if (this.waiters.has(wake)) return;
    this.waiters.add(wake);
    this.counters.waits++;
    this.arm();
  }

  /** A flow that ends stops waiting. */
  cancel(wake: () => void): void {
    this.waiters.delete(wake);
    if (this.waiters.size === 0) this.disarm();
  }

  stats(): RateLimiterStats {
    return { rate: this.spec.rate, burst: this.spec.burst, ...this.counters, waiting: this.waiters.size };
  }

  close(): void {
    this.waiters.clear();
    this.disarm();
  }

  private arm(): void {
    if (this.timer !== undefined || this.waiters.size === 0) return;
    const missing = this.quantum - this.bucket.available();
    const ms = missing <= 0 ? 0 : Math.ceil((missing / this.spec.rate) * 1000);
    this.timer = this.timers.setTimeout(this.fire, ms);
  }

  private disarm(): void {
    if (this.timer === undefined) return;
    this.timers.clearTimeout(this.timer);
    this.timer = undefined;
  }

  private readonly fire = (): void => {
    this.timer = undefined;
    // In order of waiting; a waker that cannot finish waits again (at the back).
    for (const wake of [...this.waiters]) {
      if (this.allowance() < 1) break;
      this.waiters.delete(wake);
      wake();
    }
    this.arm();
  };
}

/**
 * `moat proxy`'s rate limits are per client address (what `moat serve`'s
 * are per guest): every tunnel and forwarded request from one address shares
 * one egress and one ingress RateLimiter. An address's limiters live while
 * it has a connection open (reference counted), so the table is bounded by
 * the open connections (--max-connections per listener). A client that
 * reconnects after closing everything starts with a full burst: the burst
 * is what one address may send at once, at most once per idle period.
 */
import { RateLimiter, type LimiterTimers, type RateLimiterStats, type RateLimitSpec } from './rate-limiter.js';

export interface ClientRate {
  readonly egress: RateLimiter | undefined;
  readonly ingress: RateLimiter | undefined;
  /** The connection is done with them. Call exactly once. */
  release(): void;
}

interface Entry {
  egress: RateLimiter | undefined;
  ingress: RateLimiter | undefined;
  refs: number;
}

export class ClientRates {
  private readonly clients = new Map<string, Entry>();
  private readonly totals = { bytesUp: 0, bytesDown: 0, waits: 0 };

  constructor(
    private readonly egress: RateLimitSpec | undefined,
    private readonly ingress: RateLimitSpec | undefined,
    private readonly now: () => number = () => performance.now(),
    private readonly timers?: LimiterTimers,
  ) {}

  get enabled(): boolean {
    return this.egress !== undefined || this.ingress !== undefined;
  }

  /** The limiters of `address` (undefined when no rate is set). */
  acquire(address: string | undefined): ClientRate | undefined {
    if (!this.enabled) return undefined;
    const key = address ?? '';
    let e = this.clients.get(key);
    if (e === undefined) {
      e = { egress: this.make(this.egress), ingress: this.make(this.ingress), refs: 0 };
      this.clients.set(key, e);
    }
    e.refs++;
    const entry = e;
    let released = false;
    return {
      egress: entry.egress,
      ingress: entry.ingress,
      release: () => {
        if (released) return;
        released = true;
        if (--entry.refs > 0) return;
        this.clients.delete(key);
        this.fold(entry.egress?.stats(), entry.ingress?.stats());
        entry.egress?.close();
        entry.ingress?.close();
      },
    };
  }

  /** For /stats: the limits, the clients limited now, and bytes passed (clients gone included). */
  stats(): { egress: RateLimitSpec | null; ingress: RateLimitSpec | null; clients: number; bytesUp: number; bytesDown: number; waits: number } {
    let up = this.totals.bytesUp;
    let down = this.totals.bytesDown;
    let waits = this.totals.waits;
    for (const e of this.clients.values()) {
      const u = e.egress?.stats();
      const d = e.ingress?.stats();
      up += u?.bytes ?? 0;
      down += d?.bytes ?? 0;
      waits += (u?.waits ?? 0) + (d?.waits ?? 0);
    }
    return { egress: this.egress ?? null, ingress: this.ingress ?? null, clients: this.clients.size, bytesUp: up, bytesDown: down, waits };
  }

  private make(spec: RateLimitSpec | undefined): RateLimiter | undefined {
    return spec === undefined ? undefined : new RateLimiter(spec, this.now, this.timers);
  }

  private fold(u: RateLimiterStats | undefined, d: RateLimiterStats | undefined): void {
    this.totals.bytesUp += u?.bytes ?? 0;
    this.totals.bytesDown += d?.bytes ?? 0;
    this.totals.waits += (u?.waits ?? 0) + (d?.waits ?? 0);
  }
}

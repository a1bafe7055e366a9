/**
 * A bounded cache of answers until their expiry, least recently used
 * evicted first. The responder keeps upstream HTTPS/SVCB answers in one, so
 * a guest repeating a query within its TTL is answered here instead of
 * sending the upstream one query per question (before issue 14 those types
 * never left Moat).
 *
 * Pure: the caller passes the time.
 */
export class TtlCache<V> {
  /** key -> entry; Map order is least recently used first. */
  private readonly entries = new Map<string, { value: V; expires: number }>();
  evicted = 0;

  constructor(private readonly max: number) {
    if (!(max >= 1)) throw new RangeError(`cache bound must be at least 1, got ${max}`);
  }

  get size(): number {
    return this.entries.size;
  }

  /** The value and its remaining lifetime (ms), or undefined when absent or expired. */
  get(key: string, now: number): { value: V; remainingMs: number } | undefined {
    const e = this.entries.get(key);
    if (e === undefined) return undefined;
    this.entries.delete(key);
    if (e.expires <= now) return undefined;
    this.entries.set(key, e); // most recently used
    return { value: e.value, remainingMs: e.expires - now };
  }

  set(key: string, value: V, expires: number): void {
    this.entries.delete(key);
    this.entries.set(key, { value, expires });
    while (this.entries.size > this.max) {
      this.entries.delete(this.entries.keys().next().value as string);
      this.evicted++;
    }
  }
}

import type { FourTuple } from './api.js';

/**
 * A map keyed by four-tuple without building a string per lookup: the outer
 * key packs the guest side (address * 65536 + port < 2^48, exact in a double),
 * the inner key packs the other side the same way.
 */
export class FlowTable<V> {
  private readonly byGuest = new Map<number, Map<number, V>>();
  private count = 0;

  get size(): number {
    return this.count;
  }

  get(src: number, srcPort: number, dst: number, dstPort: number): V | undefined {
    return this.byGuest.get(src * 65536 + srcPort)?.get(dst * 65536 + dstPort);
  }

  set(t: FourTuple, value: V): void {
    const outerKey = t.src * 65536 + t.srcPort;
    let inner = this.byGuest.get(outerKey);
    if (inner === undefined) {
      inner = new Map();
      this.byGuest.set(outerKey, inner);
    }
    const innerKey = t.dst * 65536 + t.dstPort;
    if (!inner.has(innerKey)) this.count++;
    inner.set(innerKey, value);
  }

  /** Removes the entry for `t` if it is `value` (a newer flow on the same tuple stays). */
  delete(t: FourTuple, value?: V): void {
    const outerKey = t.src * 65536 + t.srcPort;
    const inner = this.byGuest.get(outerKey);
    if (inner === undefined) return;
    const innerKey = t.dst * 65536 + t.dstPort;
    const current = inner.get(innerKey);
    if (current === undefined || (value !== undefined && current !== value)) return;
    inner.delete(innerKey);
    this.count--;
    if (inner.size === 0) this.byGuest.delete(outerKey);
  }

  /** Every value, collected first so that callers may delete while they go. */
  values(): V[] {
    const all: V[] = [];
    for (const inner of this.byGuest.values()) for (const v of inner.values()) all.push(v);
    return all;
  }
}

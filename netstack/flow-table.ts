import type { IpAddress } from './addr.js';
import type { FourTuple } from './api.js';

/**
 * A map keyed by four-tuple. IPv4 builds no string per lookup: the outer key
 * packs the guest side (address * 65536 + port < 2^48, exact in a double),
 * the inner key packs the other side the same way. IPv6 tuples (packed
 * string addresses, addr.ts) live in a map of their own keyed by one string
 * of both addresses and ports: one concatenation per IPv6 lookup, and the
 * IPv4 path pays only the `typeof` that picks the map.
 */
export class FlowTable<V> {
  private readonly byGuest = new Map<number, Map<number, V>>();
  private readonly v6 = new Map<string, V>();
  private count = 0;

  get size(): number {
    return this.count + this.v6.size;
  }

  get(src: IpAddress, srcPort: number, dst: IpAddress, dstPort: number): V | undefined {
    if (typeof src !== 'number') return this.v6.get(key6(src, srcPort, dst, dstPort));
    return this.byGuest.get(src * 65536 + srcPort)?.get((dst as number) * 65536 + dstPort);
  }

  set(t: FourTuple, value: V): void {
    if (typeof t.src !== 'number') {
      this.v6.set(key6(t.src, t.srcPort, t.dst, t.dstPort), value);
      return;
    }
    const outerKey = t.src * 65536 + t.srcPort;
    let inner = this.byGuest.get(outerKey);
    if (inner === undefined) {
      inner = new Map();
      this.byGuest.set(outerKey, inner);
    }
    const innerKey = (t.dst as number) * 65536 + t.dstPort;
    if (!inner.has(innerKey)) this.count++;
    inner.set(innerKey, value);
  }

  /** Removes the entry for `t` if it is `value` (a newer flow on the same tuple stays). */
  delete(t: FourTuple, value?: V): void {
    if (typeof t.src !== 'number') {
      const k = key6(t.src, t.srcPort, t.dst, t.dstPort);
      const current = this.v6.get(k);
      if (current !== undefined && (value === undefined || current === value)) this.v6.delete(k);
      return;
    }
    const outerKey = t.src * 65536 + t.srcPort;
    const inner = this.byGuest.get(outerKey);
    if (inner === undefined) return;
    const innerKey = (t.dst as number) * 65536 + t.dstPort;
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
    for (const v of this.v6.values()) all.push(v);
    return all;
  }
}

/** 8 + 1 + 8 + 1 code units: fixed widths, so no two tuples share a key. */
export function key6(src: IpAddress, srcPort: number, dst: IpAddress, dstPort: number): string {
  return `${src as string}${String.fromCharCode(srcPort)}${dst as string}${String.fromCharCode(dstPort)}`;
}

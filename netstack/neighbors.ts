import type { IpAddress, Mac } from './addr.js';

/**
 * The guest side's IP -> MAC bindings, learned from the frames the guest
 * sends (ARP and IPv4 sources; IPv6 sources and NDP link-layer options, in a
 * table of their own). The stack never needs to ARP for the guest in
 * the common case: a guest always speaks first. Bounded: a guest that cycles
 * through source addresses evicts its oldest entries, it does not grow the map.
 */
export class NeighborTable<A extends IpAddress = IpAddress> {
  private readonly entries = new Map<A, Mac>();

  constructor(private readonly capacity = 256) {}

  learn(ip: A, mac: Mac): void {
    const known = this.entries.get(ip);
    if (known === mac) return;
    if (known !== undefined) this.entries.delete(ip);
    else if (this.entries.size >= this.capacity) {
      // Maps iterate in insertion order: the first key is the oldest binding.
      const oldest = this.entries.keys().next().value as A;
      this.entries.delete(oldest);
    }
    this.entries.set(ip, mac);
  }

  lookup(ip: A): Mac | undefined {
    return this.entries.get(ip);
  }

  /** Every address bound, oldest first. */
  addresses(): A[] {
    return [...this.entries.keys()];
  }

  clear(): void {
    this.entries.clear();
  }

  get size(): number {
    return this.entries.size;
  }
}
